"""CPU inference speed of v1 Mask R-CNN R50-FPN, per stage, against the machine's FLOP floor.

    python benchmarks/inference_cpu.py [--threads 2] [--runs 5] [--score-thresh 0.05] [--precisions fp32 bf16]
    python benchmarks/inference_cpu.py --backend all     # + every backend side by side

Per precision (`model.precision`: fp32, or bf16 / fp16 under CPU autocast), a per-stage table:
median seconds, GFLOP, and the stage's floor at that precision's measured matmul rate.

--backend all then times, in one loop and run by run in turn so that all see the same machine:
our eager model at each precision (fp32 and bf16 by default), our ONNX graph in ONNX Runtime
(`maskrcnn.export_onnx`, masks pasted in the graph, so it does all the work of the eager rows),
and, run inside a venv with torchvision (the reference venv, plus onnx / onnxruntime),
torchvision's own maskrcnn_resnet50_fpn on the same weights, eager and exported the way
torchvision documents it (torch.onnx.export, opset 17, dynamo=False) in ONNX Runtime, all with the
same thread count. Ratios are against torchvision on ONNX Runtime, the strongest CPU peer.

Weights: the torchvision parity fixture's recipe (tests/fixtures/torchvision_parity), so the
detections (and the mask branch's work) look like a trained model's. Input: coffee.png, which the
transform resizes to 800 x 1200 (batch 800 x 1216). The floor is the model's FLOPs (counted on this
very run with torch.utils.flop_counter) over the measured matmul rate; "x floor" is how many times
slower than that we are. The torchvision 0.28 row of the fp32 table is the project's earlier
figure, kept for direction only.

Measured 2026-12-02 (reference venv: torch 2.14.1, torchvision 0.29.1, ONNX Runtime 1.32.0; 2
threads on a quiet 2-core AMD EPYC with AVX512-BF16; `--backend all --runs 7`), median s / image
and ratio to torchvision on ONNX Runtime, all in one run:
    maskrcnn eager fp32    2.815  0.89      maskrcnn eager bf16     1.495  0.47
    maskrcnn ONNX Runtime  2.709  0.85      torchvision eager       3.809  1.20
    torchvision ONNX Runtime 3.174  1.00    floors: fp32 2.57 s (195 GFLOP/s), bf16 1.25 s (401)
Per stage at fp32 / bf16 (x floor): backbone+FPN 1.08 / 1.06, RPN 1.00 / 1.02, box branch 1.58 /
2.34, mask branch 0.91 / 1.09, paste 8.7 / 15.7 (67 / 59 ms). The run before it (`--runs 5`) gave
ours on ONNX Runtime 0.81 and eager fp32 0.87, bf16 0.44: the ratios move by a few hundredths
between quiet runs. Our ONNX graph is at 1.05x the fp32 floor, torchvision's at 1.24x; a per-node
ONNX Runtime profile puts both graphs' Conv and RoiAlign kernels within noise of each other, so
what separates them is torchvision's paste loop (~0.9 s) and nothing left in ours to cut. The
2048^3 GEMM used for the rate is slower than oneDNN's convolutions, hence ratios below 1.
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


def matmul_rate(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM rate in FLOP/s on this machine with the current thread count, in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
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
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"),
                        help="eager precisions to time (model.precision; default: fp32, and bf16 with --backend all)")
    parser.add_argument("--onnx-dir", type=Path, help="keep the exported .onnx files here (reused when present)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.backend == "onnxruntime":
        figures = onnx_main(args)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return 0

    model, image = seeded_model_and_image(args.score_thresh)
    precisions = args.precisions or (["fp32", "bf16"] if args.backend == "all" else ["fp32"])
    with torch.no_grad():
        flops_per_stage = stage_flops(model, image)
    flops = sum(flops_per_stage.values())
    figures = {"gflop": flops / 1e9, "stage_gflop": {k: v / 1e9 for k, v in flops_per_stage.items()},
               "threads": args.threads, "precisions": {}}
    floors = {}
    for precision in precisions:
        model.precision = precision
        figures["precisions"][precision] = stage_table(args, model, image, flops_per_stage, precision)
        floors[precision] = figures["precisions"][precision]["floor_s"]
        print()
    model.precision = "fp32"
    if args.backend == "all":
        figures["side_by_side"] = onnx_main(args, model=model, image=image, floors=floors, precisions=precisions)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


def seeded_model_and_image(score_thresh: float):
    keys = json.loads((FIXTURE / "v1_keys.json").read_text())
    model = maskrcnn.from_torchvision(seeded_state_dict(keys), "v1", box_score_thresh=score_thresh)
    array = np.array(Image.open(FIXTURE / "coffee.png").convert("RGB"))
    return model, torch.from_numpy(array).permute(2, 0, 1).float() / 255


MATMUL_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stage_table(args, model, image, flops_per_stage: dict, precision: str) -> dict:
    """Times the model (whole, then per stage) at `model.precision`, prints the per-stage table
    against the FLOP floor at this precision's matmul rate, and returns the figures."""
    flops = sum(flops_per_stage.values())
    with torch.no_grad():
        stage_times(model, image)  # warm-up
        per_run, totals = [], []
        for _ in range(args.runs):
            _, total = _timed(lambda: model([image]))
            totals.append(total)
            per_run.append(stage_times(model, image))
    rate = matmul_rate(dtype=MATMUL_DTYPE[precision])
    floor = flops / rate
    median_total = statistics.median(totals)
    stage_median = {k: statistics.median(t[k] for t, _ in per_run) for k in STAGES}
    detections = per_run[-1][1]

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, {precision} ({'CPU autocast' if precision != 'fp32' else 'no autocast'}); "
          f"coffee.png -> 800 x 1200; {detections} detections (score > {args.score_thresh})")
    print(f"model FLOPs: {flops / 1e9:.1f} GFLOP; {precision} matmul rate: {rate / 1e9:.1f} GFLOP/s; "
          f"floor: {floor:.2f} s")
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
    print(f"| {'maskrcnn ' + precision + ' (this run, median)':<34} | {median_total:9.3f} | "
          f"{median_total / floor:7.2f} | {1.0:7.2f} |")
    if precision == "fp32":
        print(f"| {'torchvision 0.28 (reference figure)':<34} | {TORCHVISION_REFERENCE_S:9.3f} | "
              f"{TORCHVISION_REFERENCE_S / floor:7.2f} | {TORCHVISION_REFERENCE_S / median_total:7.2f} |")
    print(f"| {'FLOP floor (FLOPs / matmul rate)':<34} | {floor:9.3f} | {1.0:7.2f} | {floor / median_total:7.2f} |")
    return {"seconds_per_image": median_total, "runs": totals, "stages": stage_median,
            "matmul_gflops": rate / 1e9, "floor_s": floor, "ratio_to_floor": median_total / floor,
            "detections": detections}


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


def torchvision_model(score_thresh: float):
    """torchvision's own maskrcnn_resnet50_fpn on the recipe weights, or None without torchvision."""
    try:
        from torchvision.models.detection import maskrcnn_resnet50_fpn
    except ImportError:
        return None
    keys = json.loads((FIXTURE / "v1_keys.json").read_text())
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=score_thresh)
    tv.load_state_dict(seeded_state_dict(keys))
    return tv.eval()


def export_torchvision(tv, path: Path) -> Path:
    """torchvision's model exported as torchvision documents it (its test_onnx.py): the classic
    exporter, a list of one image, dynamic H, W."""
    if path.is_file():
        return path
    start = time.perf_counter()
    example = [torch.rand(3, 400, 600)]
    torch.onnx.export(tv, (example,), str(path), opset_version=17, dynamo=False, do_constant_folding=True,
                      input_names=["images"], output_names=["boxes", "labels", "scores", "masks"],
                      dynamic_axes={"images": [1, 2], "boxes": [0, 1], "labels": [0], "scores": [0],
                                    "masks": [0, 1, 2, 3]})
    print(f"exported torchvision {__import__('torchvision').__version__} to {path} in "
          f"{time.perf_counter() - start:.0f} s")
    return path


def onnx_main(args, *, model=None, image=None, floors=None, precisions=()) -> dict:
    """Every backend in one loop, run by run in turn, so all see the same machine: our eager
    model at each of `precisions`, our ONNX graph in ONNX Runtime, and (with torchvision
    installed) torchvision's eager model and its ONNX export in ONNX Runtime."""
    import tempfile

    import onnxruntime

    if model is None:
        model, image = seeded_model_and_image(args.score_thresh)
    if floors is None:
        with torch.no_grad():
            floors = {"fp32": sum(stage_flops(model, image).values()) / matmul_rate()}
    folder = args.onnx_dir or Path(tempfile.mkdtemp(prefix="maskrcnn_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"thresh{args.score_thresh:g}"
    ours = ort_session(export_ours(model, folder / f"maskrcnn_r50_fpn_paste_{tag}.onnx"), args.threads)
    tv_model = torchvision_model(args.score_thresh)
    tv = None
    if tv_model is not None:
        tv = ort_session(export_torchvision(tv_model, folder / f"torchvision_r50_fpn_{tag}.onnx"), args.threads)
        tv_version = __import__("torchvision").__version__

    def eager(precision):
        def run():
            model.precision = precision
            with torch.no_grad():
                return model([image]).detections[0].boxes
        return run

    feeds = {"images": image[None].numpy(), "image_sizes": np.array([list(image.shape[-2:])], np.int64),
             "score_threshold": np.array(args.score_thresh, np.float32)}
    runners = {f"maskrcnn eager {p}": (eager(p), p) for p in precisions}
    runners["maskrcnn ONNX Runtime"] = (lambda: ours.run(None, feeds)[0], "fp32")
    if tv is not None:
        def tv_eager():
            with torch.no_grad():
                return tv_model([image])[0]["boxes"]
        runners[f"torchvision {tv_version} eager"] = (tv_eager, "fp32")
        runners[f"torchvision {tv_version} ONNX Runtime"] = (lambda: tv.run(None, {"images": image.numpy()})[0], "fp32")
    for run, _ in runners.values():  # warm-up
        run()
    times = {name: [] for name in runners}
    counts = {}
    for _ in range(args.runs):
        for name, (run, _) in runners.items():
            out, t = _timed(run)
            times[name].append(t)
            counts[name] = int(out.shape[0])
    model.precision = "fp32"
    median = {name: statistics.median(t) for name, t in times.items()}

    print(f"side by side, run by run in turn: ONNX Runtime {onnxruntime.__version__}, torch {torch.__version__}, "
          f"{args.threads} threads; coffee.png -> 800 x 1200; {args.runs} runs each (score > {args.score_thresh})")
    print()
    base = median.get(f"torchvision {tv_version} ONNX Runtime") if tv is not None else None
    print(f"| {'model':<40} | {'s / image':>9} | {'detections':>10} | {'x floor':>7} | {'vs tv ORT':>9} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 12}|{'-' * 9}|{'-' * 11}|")
    for name, (_, precision) in runners.items():
        floor = floors.get(precision, floors["fp32"])
        vs = f"{median[name] / base:9.2f}" if base else f"{'-':>9}"
        print(f"| {name:<40} | {median[name]:9.3f} | {counts[name]:10d} | {median[name] / floor:7.2f} | {vs} |")
    for precision, floor in floors.items():
        print(f"| {'FLOP floor at the ' + precision + ' matmul rate':<40} | {floor:9.3f} | {'':>10} | {1.0:7.2f} | "
              + (f"{floor / base:9.2f}" if base else f"{'-':>9}") + " |")
    if base is None:
        print("\n(torchvision is not installed here: run in the reference venv for its rows)")
    return {"median_s": median, "runs": times, "detections": counts, "floors_s": floors, "threads": args.threads,
            "onnxruntime": onnxruntime.__version__}


if __name__ == "__main__":
    sys.exit(main())
