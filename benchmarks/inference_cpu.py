"""CPU inference speed of v1 Mask R-CNN R50-FPN, per stage, against the machine's FLOP floor.

    python benchmarks/inference_cpu.py [--threads 2] [--runs 5] [--score-thresh 0.05]
    python benchmarks/inference_cpu.py --backend all     # + our ONNX graph in ONNX Runtime

--backend onnxruntime / all also exports our model to ONNX (`maskrcnn.export_onnx`, masks
pasted in the graph, so it does all the work of the eager row) and times it in ONNX Runtime
with the same thread count. Run inside a venv that has torchvision (the reference venv, with
the onnx extra installed), the same run also exports torchvision's own maskrcnn_resnet50_fpn on
the same weights the way torchvision documents (torch.onnx.export, opset 11+, dynamo=False),
and times it in ONNX Runtime, alternating with ours run by run so both see the same machine.

Weights: the torchvision parity fixture's recipe (tests/fixtures/torchvision_parity), so the
detections (and the mask branch's work) look like a trained model's. Input: coffee.png, which the
transform resizes to 800 x 1200 (batch 800 x 1216). The floor is the model's FLOPs (counted on this
very run with torch.utils.flop_counter) over the measured float32 matmul rate; "x floor" is how
many times slower than that we are. The baseline row is torchvision 0.28's own model on this
machine class, as measured by the project (not re-measured here: torchvision has no CPU build on
these machines).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import maskrcnn  # noqa: E402
from maskrcnn.checkpoint.seeded import seeded_state_dict  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "torchvision_parity"
TORCHVISION_REFERENCE_S = 3.5  # torchvision 0.28 maskrcnn_resnet50_fpn, 2 threads, this image
STAGES = ["transform", "backbone+FPN", "RPN", "box branch", "mask branch", "paste"]


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM rate in FLOP/s on this machine with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b))[1] for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# Stages inside `MaskRCNN.detect`, as (module whose forward starts the stage, module whose forward
# ends it); "box branch" is the RoI heads' time less the mask branch's.
HOOKED = {
    "backbone+FPN": ("backbone", "backbone"),
    "RPN": ("rpn", "rpn"),
    "roi heads": ("roi_heads", "roi_heads"),
    "mask branch": ("roi_heads.mask_pooler", "roi_heads.mask_head"),
}


def stage_times(model, image):
    """One pass of the staged inference path (preprocess -> detect -> postprocess), timed per
    stage; stages inside `detect` are read with forward hooks. Returns seconds per stage and
    the number of detections."""
    times, starts, hooks = {}, {}, []
    for stage, (first, last) in HOOKED.items():
        hooks.append(model.get_submodule(first).register_forward_pre_hook(
            lambda *_, stage=stage: starts.__setitem__(stage, time.perf_counter())))
        hooks.append(model.get_submodule(last).register_forward_hook(
            lambda *_, stage=stage: times.__setitem__(stage, time.perf_counter() - starts[stage])))
    try:
        (batch, _), times["transform"] = _timed(lambda: model.preprocess([image]))
        detections = model.detect(batch)
        _, times["paste"] = _timed(lambda: model.postprocess(detections, batch.image_sizes, [tuple(image.shape[-2:])]))
    finally:
        for hook in hooks:
            hook.remove()
    times["box branch"] = times.pop("roi heads") - times["mask branch"]
    return times, len(detections[0])


def stage_flops(model, image) -> dict[str, float]:
    """FLOPs per stage, from one forward under torch's FLOP counter (counted per module)."""
    with FlopCounterMode(display=False) as counter:
        model([image])
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    root = type(model).__name__
    flops = {stage: per_module.get(f"{root}.{first}", 0.0) for stage, (first, _) in HOOKED.items()}
    flops["mask branch"] += per_module.get(f"{root}.roi_heads.mask_head", 0.0)
    flops["box branch"] = flops.pop("roi heads") - flops["mask branch"]
    flops["transform"] = per_module.get(f"{root}.transform", 0.0)
    flops["paste"] = per_module["Global"] - sum(flops.values())
    return flops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--score-thresh", type=float, default=0.05)
    parser.add_argument("--backend", choices=("eager", "onnxruntime", "all"), default="eager",
                        help="eager: the per-stage table; onnxruntime: our ONNX graph (and torchvision's, "
                             "when installed) in ONNX Runtime; all: both")
    parser.add_argument("--onnx-dir", type=Path, help="keep the exported .onnx files here (reused when present)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.backend == "onnxruntime":
        figures = onnx_main(args)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return 0

    keys = json.loads((FIXTURE / "v1_keys.json").read_text())
    model = maskrcnn.from_torchvision(seeded_state_dict(keys), "v1", box_score_thresh=args.score_thresh)
    array = np.array(Image.open(FIXTURE / "coffee.png").convert("RGB"))
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255

    with torch.no_grad():
        flops_per_stage = stage_flops(model, image)
        flops = sum(flops_per_stage.values())
        stage_times(model, image)  # warm-up
        per_run, totals = [], []
        for _ in range(args.runs):
            _, total = _timed(lambda: model([image]))
            totals.append(total)
            per_run.append(stage_times(model, image))
    rate = matmul_rate()
    floor = flops / rate
    median_total = statistics.median(totals)
    stage_median = {k: statistics.median(t[k] for t, _ in per_run) for k in STAGES}
    detections = per_run[-1][1]

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, float32; coffee.png -> 800 x 1200; {detections} detections "
          f"(score > {args.score_thresh})")
    print(f"model FLOPs: {flops / 1e9:.1f} GFLOP; matmul rate: {rate / 1e9:.1f} GFLOP/s; floor: {floor:.2f} s")
    print()
    print(f"| {'stage':<14} | {'median s':>8} | {'share':>6} | {'GFLOP':>6} | {'floor s':>7} | {'x floor':>7} |")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 9}|")
    for k in STAGES:
        stage_floor = flops_per_stage[k] / rate
        ratio = f"{stage_median[k] / stage_floor:7.2f}" if stage_floor > 0 else f"{'-':>7}"
        print(f"| {k:<14} | {stage_median[k]:8.3f} | {stage_median[k] / sum(stage_median.values()):6.1%} | "
              f"{flops_per_stage[k] / 1e9:6.1f} | {stage_floor:7.3f} | {ratio} |")
    print()
    print(f"| {'model':<34} | {'s / image':>9} | {'x floor':>7} | {'vs ours':>7} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    print(f"| {'maskrcnn (this run, median)':<34} | {median_total:9.3f} | {median_total / floor:7.2f} | {1.0:7.2f} |")
    print(f"| {'torchvision 0.28 (reference figure)':<34} | {TORCHVISION_REFERENCE_S:9.3f} | "
          f"{TORCHVISION_REFERENCE_S / floor:7.2f} | {TORCHVISION_REFERENCE_S / median_total:7.2f} |")
    print(f"| {'FLOP floor (FLOPs / matmul rate)':<34} | {floor:9.3f} | {1.0:7.2f} | {floor / median_total:7.2f} |")
    figures = {
        "seconds_per_image": median_total, "runs": totals, "stages": stage_median, "gflop": flops / 1e9,
        "stage_gflop": {k: v / 1e9 for k, v in flops_per_stage.items()},
        "matmul_gflops": rate / 1e9, "floor_s": floor, "ratio_to_floor": median_total / floor,
        "detections": detections, "threads": args.threads,
    }
    if args.backend == "all":
        print()
        figures["onnxruntime"] = onnx_main(args, model=model, image=image, floor=floor, eager_s=median_total)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------
# ONNX Runtime rows


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_ours(model, path: Path) -> Path:
    if not path.is_file():
        start = time.perf_counter()
        maskrcnn.export_onnx(model, path, paste=True)
        print(f"exported ours to {path} in {time.perf_counter() - start:.0f} s")
    return path


def export_torchvision(score_thresh: float, path: Path) -> Path | None:
    """torchvision's maskrcnn_resnet50_fpn on the recipe weights, exported as torchvision
    documents it (its test_onnx.py): the classic exporter, a list of one image, dynamic H, W."""
    try:
        from torchvision.models.detection import maskrcnn_resnet50_fpn
    except ImportError:
        return None
    if path.is_file():
        return path
    keys = json.loads((FIXTURE / "v1_keys.json").read_text())
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=score_thresh)
    tv.load_state_dict(seeded_state_dict(keys))
    tv.eval()
    start = time.perf_counter()
    example = [torch.rand(3, 400, 600)]
    torch.onnx.export(tv, (example,), str(path), opset_version=17, dynamo=False, do_constant_folding=True,
                      input_names=["images"], output_names=["boxes", "labels", "scores", "masks"],
                      dynamic_axes={"images": [1, 2], "boxes": [0, 1], "labels": [0], "scores": [0],
                                    "masks": [0, 1, 2, 3]})
    print(f"exported torchvision {__import__('torchvision').__version__} to {path} in "
          f"{time.perf_counter() - start:.0f} s")
    return path


def onnx_main(args, *, model=None, image=None, floor=None, eager_s=None) -> dict:
    import tempfile

    import onnxruntime

    if model is None:
        keys = json.loads((FIXTURE / "v1_keys.json").read_text())
        model = maskrcnn.from_torchvision(seeded_state_dict(keys), "v1", box_score_thresh=args.score_thresh)
        array = np.array(Image.open(FIXTURE / "coffee.png").convert("RGB"))
        image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    if floor is None:
        with torch.no_grad():
            floor = sum(stage_flops(model, image).values()) / matmul_rate()
    folder = args.onnx_dir or Path(tempfile.mkdtemp(prefix="maskrcnn_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"thresh{args.score_thresh:g}"
    ours = ort_session(export_ours(model, folder / f"maskrcnn_r50_fpn_paste_{tag}.onnx"), args.threads)
    tv_path = export_torchvision(args.score_thresh, folder / f"torchvision_r50_fpn_{tag}.onnx")
    tv = ort_session(tv_path, args.threads) if tv_path else None

    x = image[None].numpy()
    ours_feeds = {"images": x, "image_sizes": np.array([list(image.shape[-2:])], np.int64),
                  "score_threshold": np.array(args.score_thresh, np.float32)}
    tv_feeds = {"images": image.numpy()}
    runners = {"ours": lambda: ours.run(None, ours_feeds)}
    if tv is not None:
        runners["torchvision"] = lambda: tv.run(None, tv_feeds)
    for run in runners.values():  # warm-up
        run()
    times = {name: [] for name in runners}
    outputs = {}
    for _ in range(args.runs):
        for name, run in runners.items():  # alternating: both see the same machine
            outputs[name], t = _timed(run)
            times[name].append(t)
    median = {name: statistics.median(t) for name, t in times.items()}
    counts = {"ours": int(outputs["ours"][0].shape[0])}
    if tv is not None:
        counts["torchvision"] = int(outputs["torchvision"][0].shape[0])

    print(f"ONNX Runtime {onnxruntime.__version__}, {args.threads} threads; coffee.png -> 800 x 1200; "
          f"detections: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (score > {args.score_thresh})")
    print()
    base = median.get("torchvision")
    print(f"| {'model':<44} | {'s / image':>9} | {'x floor':>7} | {'vs tv ORT':>9} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 9}|{'-' * 11}|")
    rows = []
    if eager_s is not None:
        rows.append(("maskrcnn eager (this run, median)", eager_s))
    rows.append(("maskrcnn ONNX Runtime (median)", median["ours"]))
    if base is not None:
        rows.append((f"torchvision {__import__('torchvision').__version__} ONNX Runtime (median)", base))
    rows.append(("FLOP floor (FLOPs / matmul rate)", floor))
    for label, seconds in rows:
        vs = f"{seconds / base:9.2f}" if base else f"{'-':>9}"
        print(f"| {label:<44} | {seconds:9.3f} | {seconds / floor:7.2f} | {vs} |")
    if base is None:
        print("\n(torchvision is not installed here: run in the reference venv for its ONNX Runtime row)")
    return {"median_s": median, "runs": times, "detections": counts, "floor_s": floor, "threads": args.threads,
            "onnxruntime": onnxruntime.__version__}


if __name__ == "__main__":
    sys.exit(main())
