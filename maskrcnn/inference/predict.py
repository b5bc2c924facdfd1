"""`maskrcnn predict SRC... --weights W --out DIR`: run a model over files, folders and globs.

Writes:

    DIR/predictions.jsonl       one line per image as soon as it is finished (its COCO results,
                                its size, and its CSV masks when --csv is asked for), or per
                                image that failed (with the reason); appended and flushed
                                image by image, so an interrupted run keeps all finished work
    DIR/results.json            COCO results: bbox, score, category_id, RLE segmentation
    DIR/images.json             the COCO "images" entries (id, file_name, height, width) of the
                                images read, so results.json's image ids can be traced to files
    DIR/overlays/NAME.png       the image with colored masks, boxes, class names and scores
    DIR/label_maps/NAME.png     with --label-maps: 0 = background, i = i-th detection (by score),
                                a palette PNG (the ids are the pixel values, shown in colour)
    DIR/videos/NAME.mp4         for a video source: its annotated frames as a video (NAME.gif,
                                .webp, .png for an animated image), at the source's frame rate
    FILE                        with --csv FILE: Kaggle "ImageId,EncodedPixels", one row per
                                instance, masks made non-overlapping by the label map

results.json, images.json and the CSV are assembled from predictions.jsonl at the end, each
atomically (temporary file + rename): also when the run is stopped by SIGTERM or Ctrl-C, from
the images finished by then. `--resume` continues a stopped run in the same DIR, skipping the
images predictions.jsonl lists as done; a new run refuses to replace an unfinished one's
predictions.jsonl unless told (`--overwrite`). Output paths are checked for writability before
the model is loaded.

Sources are what `Predictor.predict` takes (`sources.iter_inputs`): image files, folders (their
image and video files), glob patterns, videos (every frame, through PyAV: the [video] extra)
and animated GIF / WebP / PNG (every frame); a frame counts as an image of its own, named
NAME_FRAME (six digits) and listed in images.json with its "frame".

NAME is the file's stem (made unique when two inputs share one). Each image is processed on its
own: one that cannot be read (corrupt, not an image, above --max-pixels) or that the model
cannot process (e.g. 2x5000, which the resize would make 0 pixels high) is reported by name and
the run goes on. Exit code: 0 when every image was predicted, 1 when any failed, 2 when nothing
could start (bad options, weights or input, an unwritable output), 128 + the signal number
(130, 143) when stopped by a signal.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..cli import HelpFormatter
from ..device import DEVICE_HELP, PRECISIONS, DeviceError, check_precision, resolve_device
from ..io.progress import progress_bar
from ..io import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    atomic_open,
    check_writable,
    describe_os_error,
    write_json_atomic,
)
from ..io.video import VideoUnavailable, write_video
from .api import DEFAULT_BATCH_SIZE, Result, load_model
from .sources import InputItem, expand_inputs
from .outputs import masks_to_rles, rle_to_mask, write_image, write_label_map_png, write_rle_csv

__all__ = ["PROGRESS_FILE", "ProgressLog", "build_parser", "main", "output_names"]

PROGRESS_FILE = "predictions.jsonl"
# Settings that change what an image's results are: a resumed run must use the same ones, or
# results.json would mix two models or two thresholds.
_RESULT_SETTINGS = ("weights", "variant", "score_threshold", "mask_threshold", "coco_ann")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskrcnn predict",
        description="Run Mask R-CNN on images; write COCO results JSON, overlays, label maps, RLE CSV.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="image or video files, folders or glob patterns ('**' recurses)")
    p.add_argument("-w", "--weights", required=True,
                   help="model.safetensors (with its .json), a torchvision .pth/.safetensors, a Detectron2 "
                        "model zoo .pkl or .pth, or "
                        "a name: torchvision:maskrcnn_resnet50_fpn[_v2], detectron2:mask_rcnn_R_50_FPN_3x, ...")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16: bfloat16 autocast (CPU or CUDA); fp16: float16 autocast, CUDA only")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring above this")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="mask pixel = probability >= this")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this (0: no limit)")
    p.add_argument("--label-maps", action="store_true", help="also write DIR/label_maps/NAME.png")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write a Kaggle-style RLE CSV (ImageId = NAME)")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay images")
    p.add_argument("--legend", action="store_true",
                   help="overlays get a legend panel on the right (not video frames: their size stays fixed)")
    p.add_argument("--variant", choices=("v1", "v2", "faster", "faster_v2", "keypoint"),
                   help="layout of a torchvision checkpoint (default: inferred; faster*: Faster R-CNN, no masks;"
                        " keypoint: Keypoint R-CNN)")
    p.add_argument("--coco-ann", type=Path, metavar="ANN.json",
                   help="take image ids (matched by file name) and category ids (matched by class "
                        "name) from this COCO annotation file, so results.json evaluates against it")
    p.add_argument("--resume", action="store_true",
                   help=f"continue a stopped run in the same --out: skip the images DIR/{PROGRESS_FILE} "
                        "lists as done (the settings that change results must be the same)")
    p.add_argument("--overwrite", action="store_true",
                   help=f"start over even though DIR/{PROGRESS_FILE} holds a run that did not finish")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def output_names(paths: list[Path]) -> list[str]:
    """A distinct file-name stem per input: the stem, else stem_ext, else stem_2, stem_3...
    (a/x.jpg and b/x.jpg must not overwrite each other's overlay)."""
    taken: set[str] = set()
    names = []
    for path in paths:
        base = path.stem or path.name
        name = base
        if name in taken and path.suffix:
            name = f"{base}_{path.suffix.lstrip('.')}"
        n = 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        names.append(name)
    return names


def input_names(items: list[InputItem]) -> list[str]:
    """`output_names` of the files, with _FRAME (six digits) for each frame of a video or an
    animated image: clip.mp4 -> clip_000000, clip_000001, ..."""
    files = list(dict.fromkeys(item.path for item in items if item.path is not None))
    by_file = dict(zip(files, output_names(files)))
    return [by_file[item.path] if item.frame is None else f"{by_file[item.path]}_{item.frame:06d}"
            for item in items]


def coco_ids(ann_file: Path, paths: list[Path], class_names: list[str] | None,
             first_label: int = 1) -> tuple[list[Any], dict[int, int]]:
    """(image id per path, label -> category id) from a COCO annotation file; labels count
    from `first_label` (the model's: 0 for Detectron2's class index)."""
    from ..data import read_coco_json

    data = read_coco_json(ann_file)
    by_name: dict[str, Any] = {}
    for img in data["images"]:
        by_name.setdefault(str(img["file_name"]).replace("\\", "/"), img["id"])
        by_name.setdefault(Path(str(img["file_name"])).name, img["id"])
    image_ids = []
    for path in paths:
        # the longest trailing part of the path that is a file_name: "train/001.jpg" before "001.jpg"
        parts = path.as_posix().split("/")
        keys = ("/".join(parts[k:]) for k in range(len(parts)))
        image_ids.append(next((by_name[key] for key in keys if key in by_name), None))
    missing = [str(p) for p, i in zip(paths, image_ids) if i is None]
    if missing:
        raise ValueError(f"{ann_file}: no image entry for {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} (matched by file_name)")
    categories = {c["name"]: c["id"] for c in data["categories"]}
    if class_names is None:
        raise ValueError("--coco-ann needs a model with class names to match categories by name")
    unknown = [n for n in class_names if n not in categories and n != "N/A"]
    if unknown:
        raise ValueError(f"{ann_file}: no category named {', '.join(map(repr, unknown[:5]))}")
    return image_ids, {i + first_label: categories[n] for i, n in enumerate(class_names) if n in categories}


def instance_rles(result: Result) -> list[dict]:
    """COCO RLEs of the result's masks made disjoint by the label map (Kaggle submissions
    require non-overlapping masks); instances left with no pixel are dropped."""
    if result.masks is None or len(result) == 0:
        return []
    lm = result.label_map
    ids = torch.arange(1, len(result) + 1, dtype=lm.dtype)
    disjoint = (lm[None] == ids[:, None, None]).numpy()  # (R, H, W) bool
    keep = disjoint.reshape(len(result), -1).any(axis=1)
    return masks_to_rles(disjoint[keep]) if keep.any() else []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    problem = _check_numbers(args)
    if problem:
        say(f"maskrcnn predict: {problem}")
        return 2
    try:
        items = expand_inputs(args.sources)
    except (FileNotFoundError, VideoUnavailable) as e:
        say(f"maskrcnn predict: {e}")
        return 2
    try:
        device = resolve_device(args.device)
        check_precision(args.precision, device)
    except DeviceError as e:
        say(f"maskrcnn predict: {e}")
        return 2
    out: Path = args.out
    # Every output is checked before the model is loaded, so a typo in --csv costs seconds,
    # not a whole run's inference.
    try:
        check_writable(out, folder=True)
        animated = any(item.frame is not None for item in items)
        for sub, wanted in (("overlays", not args.no_overlays), ("label_maps", args.label_maps),
                            ("videos", animated and not args.no_overlays)):
            if wanted:
                check_writable(out / sub, folder=True)
        if args.csv is not None:
            check_writable(args.csv)
    except OSError as e:
        say(f"maskrcnn predict: {e.strerror or e}")
        return 2
    settings = _settings(args)
    log = ProgressLog(out / PROGRESS_FILE)
    try:
        problem = log.open(settings, resume=args.resume, overwrite=args.overwrite)
    except OSError as e:
        say(f"maskrcnn predict: {describe_os_error(e, log.path)}")
        return 2
    if problem:
        say(f"maskrcnn predict: {problem}")
        return 2
    try:
        try:
            predictor = load_model(args.weights, device=args.device, precision=args.precision, variant=args.variant,
                                   max_pixels=args.max_pixels or None)
        except Exception as e:  # any load failure is the user's input; show it without a traceback
            say(f"maskrcnn predict: cannot load --weights {args.weights}: {e}")
            return 2
        names = input_names(items)
        image_ids: list[Any] = list(range(1, len(items) + 1))
        if args.coco_ann is not None:
            try:
                image_ids, predictor.category_ids = coco_ids(args.coco_ann, [Path(it.label) for it in items],
                                                             predictor.class_names,
                                                             getattr(predictor.model, "first_label", 1))
            except (ValueError, OSError) as e:
                say(f"maskrcnn predict: {e}")
                return 2
        return _run(args, predictor, items, names, image_ids, log, say)
    finally:
        log.close()


def _check_numbers(args: argparse.Namespace) -> str | None:
    if args.batch_size < 1:
        return "--batch-size must be at least 1"
    for flag, value in (("--score-threshold", args.score_threshold), ("--mask-threshold", args.mask_threshold)):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            return f"{flag} must be a number in [0, 1], got {value}"
    if args.max_pixels < 0:
        return f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}"
    if args.resume and args.overwrite:
        return "--resume and --overwrite exclude each other"
    return None


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    weights = str(args.weights)
    if Path(weights).exists():
        weights = os.path.abspath(weights)
    return {
        "weights": weights, "variant": args.variant, "score_threshold": args.score_threshold,
        "mask_threshold": args.mask_threshold,
        "coco_ann": os.path.abspath(args.coco_ann) if args.coco_ann is not None else None,
    }


def _key(item: InputItem) -> str:
    """What predictions.jsonl knows an image by: its absolute path, with #N for frame N."""
    key = os.path.abspath(item.path)
    return key if item.frame is None else f"{key}#{item.frame}"


def _run(args, predictor, items: list[InputItem], names: list[str], image_ids: list[Any],
         log: ProgressLog, say) -> int:
    out: Path = args.out
    overlays, label_maps = not args.no_overlays, args.label_maps

    def already_done(i: int) -> bool:
        entry = log.entries.get(_key(items[i]))
        if entry is None or entry.error or (args.csv is not None and not entry.has_csv):
            return False
        if (overlays or label_maps) and entry.name != names[i]:
            return False  # its files were written under another name
        return not ((overlays and not (out / "overlays" / f"{names[i]}.png").is_file())
                    or (label_maps and not (out / "label_maps" / f"{names[i]}.png").is_file()))

    todo = [i for i in range(len(items)) if not already_done(i)]
    earlier = len(items) - len(todo)
    if args.resume and earlier:
        say(f"resuming: {earlier} of {len(items)} image(s) already done in {log.path}")

    failed: list[tuple[str, str]] = []
    predicted = detections = 0
    stopped: int | None = None  # the signal that stopped the run
    fatal: str | None = None  # an output that cannot be written: every next image would fail too
    start = time.perf_counter()
    bar = progress_bar(len(items), "predict", initial=earlier, unit="img", enabled=not args.quiet,
                       file=sys.stderr)

    def fail(i: int, problem: str) -> None:
        failed.append((items[i].label, problem))
        bar.write(f"skipped {items[i].label}: {problem}", file=sys.stderr)
        with signals.deferred():
            log.append({"path": _key(items[i]), "file": items[i].label, "error": problem})

    sources = [str(item.path) for item in items]
    with _Signals() as signals:
        try:
            for first in range(0, len(todo), args.batch_size):
                chunk = todo[first:first + args.batch_size]
                loaded: dict[int, torch.Tensor] = {}
                for i in chunk:
                    try:
                        image = items[i].load(predictor.max_pixels)
                    except ImageLoadError as e:
                        fail(i, e.problem)
                        continue
                    except Exception as e:  # e.g. MemoryError decoding a huge file: this image only
                        fail(i, f"cannot read image ({type(e).__name__}: {e})")
                        continue
                    loaded[i] = image
                outcomes = predict_isolated(predictor, loaded, sources, args)
                for i, result in outcomes.items():
                    if isinstance(result, str):
                        fail(i, result)
                        continue
                    result.frame = items[i].frame
                    try:
                        record = _write_outputs(args, result, items[i], names[i], image_ids[i])
                    except _OutputError as e:
                        fatal = str(e)
                        break
                    except Exception as e:  # e.g. drawing a degenerate image: this image only
                        fail(i, f"cannot write its outputs ({type(e).__name__}: {e})")
                        continue
                    with signals.deferred():
                        log.append(record)
                    predicted += 1
                    detections += len(result)
                if fatal:
                    break
                bar.update(len(chunk))
                bar.set_postfix(detections=detections, failed=len(failed), refresh=False)
        except _Stop as e:
            stopped = e.signum
        except KeyboardInterrupt:  # SIGINT when our handler could not be installed (not the main thread)
            stopped = signal.SIGINT
        except OSError as e:  # predictions.jsonl itself cannot be appended to
            fatal = describe_os_error(e, log.path)
    bar.close()

    if not fatal and not stopped:
        log.finish()
    try:
        done, total_detections = assemble(log, items, names, image_ids, out, args.csv)
        videos = [] if args.no_overlays or stopped or fatal else write_annotated_videos(items, names, out, say)
    except OSError as e:
        say(f"maskrcnn predict: {e.strerror or e}; every finished image is kept in {log.path} "
            "(--resume assembles it)")
        return 2
    seconds = time.perf_counter() - start
    say(f"{done} image(s), {total_detections} detection(s) in {seconds:.1f} s -> {out}"
        + (f" ({earlier} from the earlier run)" if earlier else "")
        + (f"; CSV {args.csv}" if args.csv is not None else "")
        + (f"; annotated video(s) {', '.join(map(str, videos))}" if videos else ""))
    if failed:
        say(f"{len(failed)} image(s) failed:")
        for path, problem in failed:
            say(f"  {path}: {problem}")
    if fatal:
        say(f"maskrcnn predict: stopped: {fatal}; the {done} finished image(s) are kept, "
            "--resume continues once the output can be written")
        return 2
    if stopped:
        left = len(items) - done - len(failed)
        say(f"maskrcnn predict: stopped by {signal.Signals(stopped).name}; {left} image(s) not done, "
            f"--resume continues")
        return 128 + int(stopped)
    return 1 if failed else 0


class _OutputError(Exception):
    """An output file of one image cannot be written (disk full, permissions): fatal."""


def _write_outputs(args, result: Result, item: InputItem, name: str, image_id: Any) -> dict[str, Any]:
    """Write one image's overlay and label map; return its predictions.jsonl record."""
    out: Path = args.out
    target = out
    try:
        if not args.no_overlays:
            target = out / "overlays" / f"{name}.png"
            write_image(target, result.draw(legend=args.legend and item.frame is None))
        if args.label_maps:
            target = out / "label_maps" / f"{name}.png"
            write_label_map_png(target, result.label_map.numpy())
    except OSError as e:
        raise _OutputError(describe_os_error(e, target)) from None
    height, width = result.image_size
    record: dict[str, Any] = {"path": _key(item), "file": item.label, "name": name,
                              "height": height, "width": width, "results": result.to_coco(image_id)}
    if item.frame is not None:
        record["frame"] = item.frame
    if args.csv is not None:
        record["csv"] = instance_rles(result)
    return record


def write_annotated_videos(items: list[InputItem], names: list[str], out: Path, say) -> list[Path]:
    """DIR/videos/NAME.mp4 for each video (NAME.gif / .webp / .png for an animated image),
    made of its frames' overlays in order at the source's frame rate; frames that failed are
    left out (and said so). Returns the files written."""
    by_file: dict[Path, list[int]] = {}
    for i, item in enumerate(items):
        if item.frame is not None:
            by_file.setdefault(item.path, []).append(i)
    written = []
    for (path, indices), base in zip(by_file.items(), output_names(list(by_file))):
        reader = items[indices[0]].reader
        frames = [out / "overlays" / f"{names[i]}.png" for i in indices]
        present = [f.is_file() for f in frames]
        if not any(present):
            continue
        if not all(present):
            say(f"{path}: {present.count(False)} of {len(frames)} frame(s) failed; the annotated video leaves them out")
        suffix = ".mp4" if reader.kind == "video" else path.suffix.lower()
        target = out / "videos" / f"{base}{suffix}"
        durations = [d for d, ok in zip(reader.durations, present) if ok] if reader.durations else None
        images = (Image.open(f).convert("RGB") for f, ok in zip(frames, present) if ok)
        try:
            written.append(write_video(target, images, fps=reader.fps, durations=durations))
        except Exception as e:  # the per-frame results are written; the video is a view of them
            say(f"maskrcnn predict: cannot write {target}: {type(e).__name__}: {e}")
    return written


def predict_isolated(predictor, images: dict[int, torch.Tensor], sources: list[str],
                     args) -> dict[int, Result | str]:
    """Predict a batch; when the batch fails, each image alone, so one image that breaks the
    model (or runs out of memory) costs only its own result. Values: a Result, or why not."""
    indices = list(images)
    if not indices:
        return {}
    try:
        results = predictor.predict_tensors(
            [images[i] for i in indices], [sources[i] for i in indices], args.score_threshold,
            args.mask_threshold, args.batch_size, keep_images=not args.no_overlays)
        return dict(zip(indices, results))
    except Exception as e:
        if len(indices) == 1:
            image = images[indices[0]]
            return {indices[0]: f"the model failed on this {image.shape[-2]}x{image.shape[-1]} (HxW) "
                                f"image ({type(e).__name__}: {e})"}
    outcomes: dict[int, Result | str] = {}
    for i in indices:
        outcomes.update(predict_isolated(predictor, {i: images[i]}, sources, args))
    return outcomes


# ---------------------------------------------------------------------------------------------
# predictions.jsonl


@dataclass
class _Entry:
    offset: int  # byte offset of the image's latest line
    name: str | None
    has_csv: bool
    error: bool


class ProgressLog:
    """DIR/predictions.jsonl: a header line with the settings, one line per image finished
    (`path`, `file`, `name`, `height`, `width`, `results` = its COCO results, `csv` = its
    non-overlapping RLEs with --csv) or failed (`path`, `file`, `error`), and a
    `{"finished": true}` line when a run completed. Each line is flushed and fsynced when
    written. Read back tolerantly: a last line torn by a kill is cut off, a garbled line
    skipped; an image's latest line counts."""

    def __init__(self, path: Path):
        self.path = path
        self.header: dict[str, Any] | None = None
        self.entries: dict[str, _Entry] = {}
        self.finished = False
        self._file = None
        self._size = 0

    def _read(self) -> int:
        """Read the file; return the length of its whole lines."""
        good = 0
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a kill mid-write
                offset, good = good, good + len(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    warnings.warn(f"{self.path}: skipping a garbled line at byte {offset}")
                    continue
                if not isinstance(record, dict):
                    continue
                if "maskrcnn_predict" in record and self.header is None:
                    self.header = record
                elif record.get("finished"):
                    self.finished = True
                elif isinstance(record.get("path"), str):
                    self.entries[record["path"]] = _Entry(offset, record.get("name"), "csv" in record,
                                                          "error" in record)
                    self.finished = False
        return good

    def open(self, settings: dict[str, Any], *, resume: bool, overwrite: bool) -> str | None:
        """Open for appending; returns why the run must not start, or None."""
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and not overwrite:
            good = self._read()
            if not resume and self.entries and not self.finished:
                return (f"{self.path} holds {len(self.entries)} image(s) of a run that did not finish: "
                        "--resume to continue it, or --overwrite to start over")
            if resume:
                old = (self.header or {}).get("settings", {})
                changed = [k for k in _RESULT_SETTINGS if old.get(k) != settings.get(k)]
                if changed:
                    listed = ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
                    return (f"--resume: {self.path} was written with other settings ({listed}); "
                            "use the same ones, or --overwrite to start over")
                if good != self.path.stat().st_size:
                    os.truncate(self.path, good)  # drop the torn last line before appending
                self._file = open(self.path, "ab")
                self._size = good
                return None
        self.header, self.entries, self.finished = None, {}, False
        self._file = open(self.path, "wb")
        self._size = 0
        self.header = {"maskrcnn_predict": 1, "settings": settings,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._write(self.header)
        return None

    def _write(self, record: dict[str, Any]) -> int:
        line = json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n"
        offset = self._size
        self._file.write(line)
        self._file.flush()
        with contextlib.suppress(OSError):  # best-effort, as in maskrcnn.io's atomic writes
            os.fsync(self._file.fileno())
        self._size += len(line)
        return offset

    def append(self, record: dict[str, Any]) -> None:
        offset = self._write(record)
        self.entries[record["path"]] = _Entry(offset, record.get("name"), "csv" in record, "error" in record)
        self.finished = False

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self._write({"finished": True})
            self.finished = True

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def records(self, keys: list[str]):
        """The latest line of each key that finished (not failed), in the order of `keys`."""
        with open(self.path, "rb") as f:
            for key in keys:
                entry = self.entries.get(key)
                if entry is None or entry.error:
                    yield None
                    continue
                f.seek(entry.offset)
                yield json.loads(f.readline())


def assemble(log: ProgressLog, items: list[InputItem], names: list[str], image_ids: list[Any],
             out: Path, csv_path: Path | None) -> tuple[int, int]:
    """results.json, images.json (and the CSV) from predictions.jsonl, for the images of this
    run's sources, each written atomically; returns (images, detections) written. Records are
    read back one at a time, so memory does not grow with the run."""
    keys = [_key(item) for item in items]
    images: list[dict[str, Any]] = []
    count = 0
    target = out / "results.json"
    try:
        count = _write_results(log, keys, items, image_ids, target, images)
        target = out / "images.json"
        write_json_atomic(images, target, indent=0)
        if csv_path is not None:
            target = csv_path
            rows = ((names[i], record.get("csv", []))
                    for i, record in enumerate(log.records(keys)) if record is not None)
            write_rle_csv(csv_path, _csv_masks(rows))
    except OSError as e:
        raise OSError(e.errno, describe_os_error(e, target)) from e
    return len(images), count


def _write_results(log: ProgressLog, keys: list[str], items: list[InputItem], image_ids: list[Any],
                   target: Path, images: list[dict[str, Any]]) -> int:
    """Stream the COCO results of every finished image into `target`; fill `images`."""
    count = 0
    with atomic_open(target, "w", encoding="utf-8") as f:
        f.write("[")
        for i, record in enumerate(log.records(keys)):
            if record is None:
                continue
            image = {"id": image_ids[i], "file_name": str(items[i].path),
                     "height": record["height"], "width": record["width"]}
            if items[i].frame is not None:
                image["frame"] = items[i].frame  # the frame of the video / animation file_name
            images.append(image)
            for entry in record["results"]:
                entry["image_id"] = image_ids[i]  # this run's ids (a resumed run may list other sources)
                f.write(("," if count else "") + json.dumps(entry, separators=(",", ":")))
                count += 1
        f.write("]")
    return count


class _Stop(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, so that the per-image `except Exception`
    isolation does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """While active, SIGINT and SIGTERM raise `_Stop` at once, except inside `deferred()` (an
    append to predictions.jsonl), where they wait for its end so no line is torn. Only the main
    thread can install handlers; elsewhere this does nothing."""

    def __init__(self):
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._pending: int | None = None

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._pending = signum
        else:
            raise _Stop(signum)

    @contextlib.contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise _Stop(signum)


def _csv_masks(rows: list[tuple[str, list[dict]]]):
    """(image id, one (H, W) mask or None) per CSV row; decoded one at a time so the whole
    run's masks never sit in memory together."""
    for name, rles in rows:
        if not rles:
            yield name, None  # Kaggle's "no object in this image" row
        for rle in rles:
            yield name, rle_to_mask(rle)


if __name__ == "__main__":
    sys.exit(main())
