"""Training throughput on the CPU: ours against torchvision, same model, data and settings.

    python benchmarks/train_cpu.py [--threads 2] [--iters 5] [--warmup 2] [--configs r18_256 r50_800]
                                   [--precision fp32|bf16] [--memory]

Run it in the reference venv (torch + torchvision, this package installed): both models train in
this one process, iteration by iteration in turn, so they see the same machine. Without
torchvision only our rows are printed.

Configs (the issue's):
    r18_256   ResNet-18-FPN from scratch, images 256 px, batch 4, 500 proposals and 128 sampled
              RoIs per image
    r50_800   ResNet-50-FPN (torchvision's maskrcnn_resnet50_fpn layout), 800 px, batch 2,
              torchvision's defaults (2000 proposals, 512 RoIs per image)
Both sides start from the same tensors (`initial_weights`: the parity fixtures' seeded recipe,
in our names, loaded into torchvision's model through the checkpoint name map; a reference test
checks that the two models then give the same detections), frozen batch norm, every backbone
stage trainable, SGD with momentum 0.9 and weight decay 1e-4 at lr 0.01; the same synthetic shapes
images and targets. The table's "first loss" shows the two sides computing the same thing (the
RoI samplers draw differently, so it agrees to about 1e-3 at R18 and 2 % at R50, not bit for
bit). An iteration is forward (the five losses), backward and the optimizer step; the median
over `--iters` timed iterations after `--warmup` is reported; a non-finite loss stops the config
with a "diverged" row, since what follows it would time a model that no longer does the work. "x floor" is the
time over (FLOPs of one forward + backward, counted by torch's FlopCounterMode) / the float32
2048^3 GEMM rate measured in the same run. Peak memory (`--memory`): each side in a subprocess of
its own, its peak RSS (VmHWM) after warm-up + timed iterations.

Measured 2026-12-02 on 2 quiet cores (reference venv: torch 2.14.1, torchvision 0.29.1; AMD EPYC
with AVX512-BF16), `python benchmarks/train_cpu.py --memory` then `--precision bf16`:
    config    precision  ours s/it  torchvision s/it  ratio  x floor (ours / tv)  peak RSS GiB (ours / tv)
    r18_256   fp32         2.851        3.315         0.86     1.21 / 1.46          1.52 / 1.57
    r50_800   fp32        11.809       16.285         0.73     1.34 / 1.85          3.49 / 3.53
    r18_256   bf16         1.257        1.876         0.67     1.10 / 1.85
    r50_800   bf16         4.645        7.701         0.60     1.16 / 1.78
fp32 GEMM 187 GFLOP/s, bf16 396. First losses 2.543 / 2.544 and 3.559 / 3.612 in fp32. RSS
read after the VmHWM fix (`peak_rss_gib`), with ~1 GiB of setup in it (torch, the start weights).
With both sides under bf16 autocast we take 0.67x / 0.60x torchvision's time; in float32 0.86x /
0.73x. 0.67x in float32 would need ours at 0.98x / 1.24x of the floor: every convolution's forward
and backward faster than the best single oneDNN convolution forward + backward we measured on
this machine (1.27x), so no overhead left to cut in float32 would get there.

Until 2026-12-02 each side used its own library's random init; torchvision's (unit frozen-BN
scales on ResNet-50) reached NaN losses at the second r50_800 iteration, so its timed iterations
were of a diverged model; the figures before that date are void.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from inference_cpu import matmul_rate  # noqa: E402
from maskrcnn import build_model  # noqa: E402
from maskrcnn.checkpoint.seeded import Recipe, seeded_state_dict  # noqa: E402
from maskrcnn.checkpoint.torchvision import convert_state_dict  # noqa: E402
from maskrcnn.data import CocoDataset, generate_shapes_dataset  # noqa: E402
from maskrcnn.modeling.build import ModelConfig  # noqa: E402

CONFIGS = {
    "r18_256": dict(depth=18, size=256, batch=4, proposals=500, rois=128),
    "r50_800": dict(depth=50, size=800, batch=2, proposals=2000, rois=512),
}
NUM_CLASSES = 4  # background + the shapes' three


def make_batch(size: int, batch: int, seed: int = 0):
    """`batch` square synthetic shapes images with their targets (boxes, labels, masks)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        annotations = generate_shapes_dataset(Path(folder), batch, seed=seed, image_size=(size, size),
                                              size_range=(size / 10, size / 3), empty_fraction=0.0)
        dataset = CocoDataset(annotations, annotations.parent / "images")
        items = [dataset[i] for i in range(batch)]
    keep = ("boxes", "labels", "masks")
    return [image for image, _ in items], [{k: t[k] for k in keep} for _, t in items]


def ours(cfg: dict):
    config = ModelConfig.from_dict(dict(
        variant="v1", depth=cfg["depth"], num_classes=NUM_CLASSES, trainable_backbone_layers=5,
        min_size=cfg["size"], max_size=cfg["size"], rpn_post_nms_top_n_train=cfg["proposals"],
        box_batch_size_per_image=cfg["rois"]))
    model = build_model(config)

    def losses(images, targets):
        return model(images, targets).losses

    return model, losses


def torchvision_model(cfg: dict):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    backbone = resnet_fpn_backbone(backbone_name=f"resnet{cfg['depth']}", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=5)
    model = MaskRCNN(backbone, num_classes=NUM_CLASSES, min_size=cfg["size"], max_size=cfg["size"],
                     rpn_post_nms_top_n_train=cfg["proposals"], box_batch_size_per_image=cfg["rois"])

    def losses(images, targets):
        return model(images, targets)

    return model, losses


BUILDERS = {"maskrcnn": ours, "torchvision": torchvision_model}


def initial_weights(cfg: dict) -> dict:
    """The tensors both sides start from, in our names: the parity fixtures' seeded recipe
    (He-normal convs, prediction layers at 0.1 gain, each residual branch's last norm scaled to
    about 0.2, frozen statistics near 0 mean and unit variance). Each library's own random init
    differs from the other's, and torchvision's (unit frozen-BN scales on a 50-layer ResNet) went
    to NaN losses by the second iteration at lr 0.01: the iterations timed were then of a
    diverged model, so the two sides no longer did the same work."""
    model, _ = ours(cfg)
    last_norm = ("bn3.weight",) if cfg["depth"] >= 50 else ("bn2.weight",)
    recipe = Recipe(output_layer_suffixes=("rpn.head.objectness.weight", "rpn.head.deltas.weight",
                                           "box_predictor.cls_score.weight", "box_predictor.bbox_pred.weight",
                                           "mask_head.predictor.weight"),
                    last_norm_suffixes=last_norm)
    return seeded_state_dict([(k, list(v.shape), "float32") for k, v in model.state_dict().items()], recipe)


def load_initial_weights(name: str, model, weights: dict) -> None:
    if name == "maskrcnn":
        model.load_state_dict(weights)
        return
    ours_names = convert_state_dict(dict.fromkeys(model.state_dict()))  # torchvision name -> ours, in order
    model.load_state_dict({tv: weights[our] for tv, our in zip(model.state_dict(), ours_names)})


class DivergedError(RuntimeError):
    pass


def train_step(model, losses, optimizer, images, targets) -> tuple[float, float]:
    """One iteration; returns (seconds, total loss). A non-finite loss stops the benchmark: the
    iterations after it would time a model that no longer does the work being measured."""
    start = time.perf_counter()
    loss = sum(losses(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise DivergedError(f"{type(model).__module__}: loss {float(loss.detach())}")
    return seconds, float(loss.detach())


def prepare(name: str, cfg: dict, weights: dict | None = None, precision: str = "fp32"):
    """precision "bf16": the forward under CPU autocast bfloat16 on both sides (ours through its
    `precision` attribute, which otherwise turns an outer autocast off; torchvision by wrapping
    its forward), float32 weights and optimizer as in any mixed-precision training."""
    torch.manual_seed(0)
    model, losses = BUILDERS[name](cfg)
    load_initial_weights(name, model, initial_weights(cfg) if weights is None else weights)
    model.train()
    if precision == "bf16":
        if name == "maskrcnn":
            model.precision = "bf16"
        else:
            fp32_losses = losses

            def losses(images, targets):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return {k: v.float() for k, v in fp32_losses(images, targets).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    return model, losses, optimizer


def available() -> list[str]:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return ["maskrcnn"]
    return ["maskrcnn", "torchvision"]


def iteration_flops(model, losses, images, targets) -> float:
    """FLOPs of one forward + backward (torch's FlopCounterMode: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        sum(losses(images, targets).values()).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_config(key: str, args) -> tuple[dict, dict, dict]:
    cfg = CONFIGS[key]
    images, targets = make_batch(cfg["size"], cfg["batch"])
    weights = initial_weights(cfg)
    sides = {name: prepare(name, cfg, weights, args.precision) for name in available()}
    first_loss = {}
    for _ in range(args.warmup):
        for name, (model, losses, optimizer) in sides.items():
            first_loss.setdefault(name, train_step(model, losses, optimizer, images, targets)[1])
    times = {name: [] for name in sides}
    for _ in range(args.iters):
        for name, (model, losses, optimizer) in sides.items():  # alternating, same machine
            seconds, loss = train_step(model, losses, optimizer, images, targets)
            times[name].append(seconds)
            first_loss.setdefault(name, loss)
    flops = {name: iteration_flops(model, losses, images, targets) for name, (model, losses, _) in sides.items()}
    return times, first_loss, flops


def peak_rss_gib() -> float:
    """This process's peak RSS. Linux's ru_maxrss is not that: exec keeps the high-water mark of
    the forked copy of the parent, so a child started by a parent holding 4 GiB reports at least
    4 GiB (both sides once read the same 2.25 / 4.75 GiB that way). /proc's VmHWM belongs to the
    new address space alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux, bytes on macOS


def peak_memory(key: str, name: str, args) -> float:
    """Peak RSS (GiB) of one side alone, in a fresh process."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import torch, train_cpu as b; torch.set_num_threads({args.threads}); "
            f"cfg=b.CONFIGS[{key!r}]; im, tg = b.make_batch(cfg['size'], cfg['batch']); "
            f"m, l, o = b.prepare({name!r}, cfg, precision={args.precision!r}); "
            f"[b.train_step(m, l, o, im, tg) for _ in range({args.warmup + args.iters})]; "
            f"print(b.peak_rss_gib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: both sides' forward under CPU autocast bfloat16 (x floor then at the "
                             "bfloat16 GEMM rate)")
    parser.add_argument("--memory", action="store_true", help="also peak RSS per side (a subprocess each)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sides = available()
    print(f"torch {torch.__version__}, {args.threads} threads, {args.precision}; sides: {', '.join(sides)}; "
          f"median of {args.iters} iterations after {args.warmup} warm-up")
    print()
    rate = matmul_rate(dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32)
    print(f"{args.precision} matmul rate (2048^3 GEMM): {rate / 1e9:.0f} GFLOP/s; x floor = time / (GFLOP / rate)")
    print()
    print("| config | side | s / iteration | vs torchvision | GFLOP | x floor | first loss | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    figures = {}
    for key in args.configs:
        try:
            times, first_loss, flops = time_config(key, args)
        except DivergedError as e:
            print(f"| {key} | diverged: {e} | - | - | - | - | - | - |")
            figures[key] = {"diverged": str(e)}
            continue
        median = {name: statistics.median(t) for name, t in times.items()}
        figures[key] = {"median_s": median, "runs": times, "first_loss": first_loss, "gflop":
                        {n: f / 1e9 for n, f in flops.items()}, "matmul_gflops": rate / 1e9}
        for name in sides:
            ratio = f"{median[name] / median['torchvision']:.2f}" if "torchvision" in median else "-"
            memory = f"{peak_memory(key, name, args):.2f}" if args.memory else "-"
            figures[key].setdefault("peak_rss_gib", {})[name] = memory
            floor = flops[name] / rate
            print(f"| {key} | {name} | {median[name]:.3f} | {ratio} | {flops[name] / 1e9:.0f} | "
                  f"{median[name] / floor:.2f} | {first_loss[name]:.3f} | {memory} |")
    if "torchvision" not in sides:
        print("\n(torchvision is not installed here: run in the reference venv for its rows)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
