"""Peak memory (RSS) of the two cases whose memory once grew with instances x image size.

    python benchmarks/memory.py                 # both cases
    python benchmarks/memory.py --case train    # one
    python benchmarks/memory.py --instances 1000 --megapixels 12   # smaller variants

train:   one training iteration (small preset, CPU) on a 512 x 512 image with 3,000 instances
         (mask targets and the resize of the instance masks were (instances, H, W) float32
         tensors: 9.8 GB in the issue). Bound: 3 GB.
predict: `maskrcnn predict` of a 50 MP image (8000 x 6250, the default --max-pixels) with 20
         detections, writing results.json and the overlay (pasting gave a (20, H, W) float32
         tensor, 4 GB, then a bool copy: 7.3 GB in the issue). Bound: 3 GB.

Each case runs in its own fresh Python process, which reports its own peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) at the end; the numbers include the ~0.4 GB of
torch and the model, i.e. they are what the process as a whole needed. Data and weights are
generated in a temporary folder (random weights: nothing is downloaded).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOUND_GB = 3.0


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _small_model_overrides() -> list[str]:
    return ["model.preset=maskrcnn_resnet18_small", "model.rpn_pre_nms_top_n_train=200",
            "model.rpn_post_nms_top_n_train=100", "model.box_batch_size_per_image=64"]


def case_train(work: Path, instances: int, size: int = 512) -> dict:
    """One iteration on one size x size image with `instances` square-ish instances."""
    import numpy as np
    from PIL import Image

    from maskrcnn.engine.config import load_config
    from maskrcnn.engine.train import train

    images = work / "images"
    images.mkdir()
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(images / "crowded.png")
    rng = np.random.default_rng(0)
    anns = []
    for i in range(instances):
        x, y = rng.uniform(0, size - 24, 2)
        w, h = rng.uniform(6, 24, 2)
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float(w * h),
                     "bbox": [float(x), float(y), float(w), float(h)],
                     "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    data = {"images": [{"id": 1, "file_name": "crowded.png", "width": size, "height": size}],
            "categories": [{"id": 1, "name": "thing"}], "annotations": anns}
    (work / "ann.json").write_text(json.dumps(data))
    cfg = load_config(None, _small_model_overrides() + [
        f"model.min_size={size}", f"model.max_size={size}",
        f"data.train_annotations={work / 'ann.json'}", f"data.train_images={images}", "data.num_workers=0",
        "data.hflip_prob=0", "solver.batch_size=1", "solver.max_iter=1", "solver.warmup_iters=0",
        f"train.output_dir={work / 'run'}", "train.progress=false", "train.tensorboard=false",
    ])
    train(cfg)
    return {"case": f"train: 1 iteration, {instances} instances on a {size}x{size} image"}


def case_predict(work: Path, megapixels: float, detections: int = 20) -> dict:
    """`maskrcnn predict` (results.json + overlay) of one image of `megapixels` with `detections`."""
    import numpy as np
    from PIL import Image

    from maskrcnn.checkpoint import save_model
    from maskrcnn.inference.predict import main as predict_main
    from maskrcnn.modeling.build import build_preset

    width = 8000 if megapixels >= 50 else int((megapixels * 1e6 * 1.28) ** 0.5)
    height = int(megapixels * 1e6) // width
    ramp = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    Image.fromarray(np.broadcast_to(ramp[None, :, None], (height, width, 3)).copy()).save(work / "big.png")
    # random weights; score threshold 0 and the per-image cap make exactly `detections` detections
    model = build_preset("maskrcnn_resnet18_small", num_classes=3, box_score_thresh=0.0,
                         box_detections_per_img=detections)
    save_model(model, work / "model.safetensors")
    code = predict_main([str(work / "big.png"), "-w", str(work / "model.safetensors"), "-o", str(work / "out"),
                         "--score-threshold", "0", "-q"])
    results = json.loads((work / "out" / "results.json").read_text())
    return {"case": f"predict: {width}x{height} image ({width * height / 1e6:.1f} MP), "
                    f"{len(results)} detections, results.json + overlay", "exit_code": code}


def child(case: str, instances: int, megapixels: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if case == "train":
            report = case_train(Path(tmp), instances)
        else:
            report = case_predict(Path(tmp), megapixels)
    report["peak_rss_gb"] = round(_peak_gb(), 3)
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("train", "predict", "all"), default="all")
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--megapixels", type=float, default=50.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.case, args.instances, args.megapixels)
        return
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for case in (("train", "predict") if args.case == "all" else (args.case,)):
        proc = subprocess.run([sys.executable, __file__, "--child", "--case", case, "--instances",
                               str(args.instances), "--megapixels", str(args.megapixels)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{case}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        verdict = "within" if report["peak_rss_gb"] <= BOUND_GB else "OVER"
        print(f"{report['case']}: peak RSS {report['peak_rss_gb']:.2f} GB ({verdict} the {BOUND_GB:g} GB bound)")


if __name__ == "__main__":
    main()
