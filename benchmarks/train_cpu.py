"""Training throughput on the CPU: ours against torchvision, same model, data and settings.

    python benchmarks/train_cpu.py [--threads 2] [--iters 5] [--warmup 2] [--configs r18_256 r50_800]

Run it in the reference venv (torch + torchvision, this package installed): both models train in
this one process, iteration by iteration in turn, so they see the same machine. Without
torchvision only our rows are printed.

Configs (the issue's):
    r18_256   ResNet-18-FPN from scratch, images 256 px, batch 4, 500 proposals and 128 sampled
              RoIs per image
    r50_800   ResNet-50-FPN (torchvision's maskrcnn_resnet50_fpn layout), 800 px, batch 2,
              torchvision's defaults (2000 proposals, 512 RoIs per image)
Both sides: random weights (seeded), frozen batch norm, every backbone stage trainable, SGD with
momentum 0.9 and weight decay 1e-4 at lr 0.01; the same synthetic shapes images and targets.
An iteration is forward (the five losses), backward and the optimizer step; the median over
`--iters` timed iterations after `--warmup` is reported. Peak memory (`--memory`): each side in a
subprocess of its own, ru_maxrss after warm-up + timed iterations.

Measured 2026-12-02 on a quiet 2-core machine (`--threads 2 --iters 3 --warmup 1 --memory`,
reference venv, torch 2.14.1): r18_256 ours 2.883 s / iteration against torchvision 3.096 s
(0.93); r50_800 ours 10.958 s against 12.824 s (0.85); peak RSS 2.06 / 4.16 GiB. Before the
embedding_bag RoIAlign and the kept-boxes NMS the r18_256 ratio was 1.40 (shared machine). What
is left is mostly convolution forward and backward (about two thirds of either side's
iteration, the same oneDNN kernels), which is why 0.67 is not reached in float32.
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
sys.path.insert(0, str(ROOT))

from maskrcnn import build_model  # noqa: E402
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


def train_step(model, losses, optimizer, images, targets) -> float:
    start = time.perf_counter()
    loss = sum(losses(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def prepare(name: str, cfg: dict):
    torch.manual_seed(0)
    model, losses = BUILDERS[name](cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    return model, losses, optimizer


def available() -> list[str]:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return ["maskrcnn"]
    return ["maskrcnn", "torchvision"]


def time_config(key: str, args) -> dict[str, list[float]]:
    cfg = CONFIGS[key]
    images, targets = make_batch(cfg["size"], cfg["batch"])
    sides = {name: prepare(name, cfg) for name in available()}
    for _ in range(args.warmup):
        for model, losses, optimizer in sides.values():
            train_step(model, losses, optimizer, images, targets)
    times = {name: [] for name in sides}
    for _ in range(args.iters):
        for name, (model, losses, optimizer) in sides.items():  # alternating, same machine
            times[name].append(train_step(model, losses, optimizer, images, targets))
    return times


def peak_memory(key: str, name: str, args) -> float:
    """Peak RSS (GiB) of one side alone, in a fresh process."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import torch, resource, train_cpu as b; torch.set_num_threads({args.threads}); "
            f"cfg=b.CONFIGS[{key!r}]; im, tg = b.make_batch(cfg['size'], cfg['batch']); "
            f"m, l, o = b.prepare({name!r}, cfg); "
            f"[b.train_step(m, l, o, im, tg) for _ in range({args.warmup + args.iters})]; "
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 2**20  # KiB -> GiB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--memory", action="store_true", help="also peak RSS per side (a subprocess each)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sides = available()
    print(f"torch {torch.__version__}, {args.threads} threads; sides: {', '.join(sides)}; "
          f"median of {args.iters} iterations after {args.warmup} warm-up")
    print()
    print("| config | side | s / iteration | vs torchvision | peak RSS GiB |")
    print("|---|---|---|---|---|")
    figures = {}
    for key in args.configs:
        times = time_config(key, args)
        median = {name: statistics.median(t) for name, t in times.items()}
        figures[key] = {"median_s": median, "runs": times}
        for name in sides:
            ratio = f"{median[name] / median['torchvision']:.2f}" if "torchvision" in median else "-"
            memory = f"{peak_memory(key, name, args):.2f}" if args.memory else "-"
            figures[key].setdefault("peak_rss_gib", {})[name] = memory
            print(f"| {key} | {name} | {median[name]:.3f} | {ratio} | {memory} |")
    if "torchvision" not in sides:
        print("\n(torchvision is not installed here: run in the reference venv for its rows)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    _ = resource  # ru_maxrss is read in the subprocesses
    return 0


if __name__ == "__main__":
    sys.exit(main())
