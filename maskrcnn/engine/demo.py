"""`maskrcnn demo`: see the whole system work in a few minutes on a CPU.

    maskrcnn demo                      # writes ./demo_output
    maskrcnn demo --out /tmp/demo --iterations 300

1. writes the synthetic shapes dataset as a real COCO dataset on disk: a training set and a
   held-out validation set drawn with another seed;
2. trains the small CPU config (maskrcnn/configs/shapes_cpu.yaml) through the same `train` as
   `maskrcnn train`, with checkpoints, metrics.jsonl and TensorBoard logs;
3. evaluates on the held-out images with pycocotools (bbox and segm AP);
4. draws some held-out images, ground truth beside predictions (overlays/*.png), and writes
   summary.json and summary.txt.

The last line printed is `demo: mask AP50 = X.XXX, mask AP = X.XXX, time = N s`.

`maskrcnn demo --keypoints` does the same for Keypoint R-CNN: the synthetic keypoint shapes
(`data.keypoint_shapes`), configs/keypoints_cpu.yaml, keypoint AP (OKS) through pycocotools, the
keypoints and their skeleton on the overlays; its last line is
`demo: keypoint AP = X.XXX, keypoint AP50 = X.XXX, time = N s`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..cli import HelpFormatter
from ..data import CocoDataset, generate_shapes_dataset, write_json_atomic
from ..data.keypoint_shapes import generate_keypoint_shapes_dataset
from ..inference.outputs import write_image
from ..io import atomic_write
from .config import ConfigError, load_config

CONFIG = "shapes_cpu.yaml"
KEYPOINT_CONFIG = "keypoints_cpu.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskrcnn demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", default="demo_output", help="output folder (default: ./demo_output)")
    parser.add_argument("--iterations", type=int, help="training iterations (default: the config's)")
    parser.add_argument("--train-images", type=int, default=500, help="synthetic training images")
    parser.add_argument("--val-images", type=int, default=200, help="held-out images for evaluation")
    parser.add_argument("--overlays", type=int, default=8, help="held-out images to draw predictions on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--keypoints", action="store_true",
                        help=f"Keypoint R-CNN on the synthetic keypoint shapes ({KEYPOINT_CONFIG})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"overrides of {CONFIG}")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)

    # 1. data: training and held-out sets from different seeds, so no image is shared
    print(f"demo: writing {args.train_images} training and {args.val_images} held-out shapes images to {out / 'data'}")
    generate = generate_keypoint_shapes_dataset if args.keypoints else generate_shapes_dataset
    config = KEYPOINT_CONFIG if args.keypoints else CONFIG
    train_ann = generate(out / "data" / "train", args.train_images, seed=args.seed)
    val_ann = generate(out / "data" / "val", args.val_images, seed=args.seed + 10_000)

    # 2. train (a previous demo run in the same folder is replaced, never resumed)
    run_dir = out / "train"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = [
        f"data.train_annotations={train_ann}", f"data.train_images={train_ann.parent / 'images'}",
        f"data.val_annotations={val_ann}", f"data.val_images={val_ann.parent / 'images'}",
        f"train.output_dir={run_dir}", f"train.seed={args.seed}",
    ]
    if args.iterations is not None:
        overrides.append(f"solver.max_iter={args.iterations}")
    try:
        cfg = load_config(config, overrides + list(args.overrides))
    except ConfigError as e:
        print(f"maskrcnn demo: {e}", file=sys.stderr)
        return 2
    from .train import train  # imported here: `maskrcnn demo --help` stays instant

    result = train(cfg)
    results = result.eval_results  # 3. the held-out evaluation `train` ran at the end

    # 4. overlays and summary
    overlay_paths = draw_overlays(result.model, val_ann, out / "overlays", args.overlays)
    seconds = time.perf_counter() - start
    bbox = results["bbox"]
    main_type, main_name = ("keypoints", "keypoint") if args.keypoints else ("segm", "mask")
    main = results[main_type]
    summary = {
        f"{main_name}_AP50": main["AP50"], f"{main_name}_AP": main["AP"], "box_AP50": bbox["AP50"], "box_AP": bbox["AP"],
        "seconds": round(seconds, 1), "iterations": cfg.solver.max_iter, "batch_size": cfg.solver.batch_size,
        "train_images": args.train_images, "val_images": args.val_images, "threads": torch.get_num_threads(),
        "weights": str(result.final_weights), "overlays": [str(p) for p in overlay_paths], "evaluation": results,
    }
    write_json_atomic(summary, out / "summary.json")
    from ..evaluation import format_results

    text = (f"maskrcnn demo: {cfg.preset} trained {cfg.solver.max_iter} iterations x {cfg.solver.batch_size} images "
            f"on {args.train_images} synthetic images, evaluated on {args.val_images} held-out images.\n\n"
            f"{format_results(results)}\n\nweights: {result.final_weights}\noverlays: {out / 'overlays'}\n"
            f"time: {seconds:.0f} s\n")
    atomic_write(out / "summary.txt", lambda tmp: Path(tmp).write_text(text))
    print(text)
    if args.keypoints:
        print(f"demo: keypoint AP = {main['AP']:.3f}, keypoint AP50 = {main['AP50']:.3f}, time = {seconds:.0f} s")
    else:
        print(f"demo: mask AP50 = {main['AP50']:.3f}, mask AP = {main['AP']:.3f}, time = {seconds:.0f} s")
    return 0


@torch.no_grad()
def draw_overlays(model, annotations: Path, out_dir: Path, count: int, score_thresh: float = 0.5) -> list[Path]:
    """The first `count` held-out images: ground truth on the left, predictions (score >=
    score_thresh) on the right, a legend of every class (same class, same colour) beside."""
    dataset = CocoDataset(annotations, annotations.parent / "images")
    names = ["__background__", *dataset.class_names]
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        det = model([image], score_thresh=score_thresh).detections[0]
        path = out_dir / f"{target['image_id']:06d}.png"
        write_image(path, ground_truth_beside_prediction(image, target, det, names, skeleton=dataset.keypoint_skeleton))
        paths.append(path)
    return paths


def ground_truth_beside_prediction(image: torch.Tensor, target: dict, det, class_names: list[str],
                                   scale: int = 3, skeleton=None) -> Image.Image:
    """[ground truth | prediction | legend], titled, drawn on a `scale`x nearest-neighbour
    enlargement (128 px is tiny on a screen; the pixels stay crisp, the captions readable).
    Keypoints (a keypoint model's data) are drawn with their `skeleton` on both sides."""
    from ..inference.draw import add_legend, draw_instances

    def big(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)

    enlarged = big(image)
    def points(kp):  # (R, P, 3) scaled as the image; visibility kept
        return None if kp is None else kp * torch.tensor([scale, scale, 1.0])

    truth = draw_instances(enlarged, target["boxes"] * scale, target["labels"], None,
                           big(target["masks"].bool()) if "masks" in target else None, class_names,
                           keypoints=points(target.get("keypoints")), skeleton=skeleton)
    predicted = draw_instances(enlarged, det.boxes * scale, det.labels, det.scores,
                               None if det.masks is None else big(det.masks >= 0.5), class_names,
                               keypoints=points(getattr(det, "keypoints", None)), skeleton=skeleton)
    title_h = 18
    canvas = Image.new("RGB", (truth.width * 2, truth.height + title_h), (255, 255, 255))
    canvas.paste(truth, (0, title_h))
    canvas.paste(predicted, (truth.width, title_h))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), f"ground truth ({len(target['labels'])})", fill=(0, 0, 0))
    draw.text((truth.width + 4, 3), f"prediction ({len(det.labels)})", fill=(0, 0, 0))
    return add_legend(canvas, torch.arange(1, len(class_names)), class_names)
