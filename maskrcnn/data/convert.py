"""Converters from common annotation formats into COCO instance JSON (`maskrcnn convert`).

Each converter writes one COCO JSON whose image `file_name`s are relative to the source
folder (for CSV: to the image folder), so training takes `--images SRC`. Masks are checked the
way `CocoDataset` checks them; bad items raise `DataError` naming the file, unless
`skip_bad=True`, which drops them and lists them in the result.

Image names read from the files (LabelMe `imagePath`, CSV `ImageId`) must stay inside the
source folder: absolute names and `..` that climb out of it are refused unless
`allow_outside=True` (`--allow-outside-paths`); images found there then get absolute
`file_name`s. Text files are read as UTF-8 (or UTF-16/32 with a byte-order mark), or in the
`encoding` given; anything else is refused with the file and the offending byte named.

Formats:
  labelme  SRC/**/*.json, LabelMe's files (polygon, rectangle, circle and mask shapes; shapes
           sharing a `group_id` and label form one instance; points and lines are ignored).
  masks    one binary PNG per instance (non-zero pixels = object):
               SRC/images/NAME.{png,jpg,...}
               SRC/masks/NAME/CLASS_K.png    e.g. masks/img01/cat_0.png, masks/img01/cat_1.png
           A mask file not named CLASS_K (K digits) gets `default_class`. Images without a
           masks/NAME folder are kept as images with no objects. The Kaggle Data Science Bowl
           2018 layout, SRC/NAME/images/NAME.png + SRC/NAME/masks/*.png, is read too.
  rle-csv  Kaggle run-length CSV `ImageId,EncodedPixels` (one row per instance; an empty
           EncodedPixels lists an image with no objects); single class unless a `ClassId`
           column is present.
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..cli import HelpFormatter
from ..io import DataError, decode_kaggle_rle, image_sizes, inside_folder, read_text, write_json_atomic

__all__ = [
    "ConversionResult", "categories_from", "labelme_to_coco", "mask_pngs_to_coco", "rle_csv_to_coco", "convert_main",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
_CLASS_K = re.compile(r"^(?P<cls>.+)_(?P<k>\d+)$")


# ---------------------------------------------------------------------- building the JSON

@dataclass
class ConversionResult:
    """What a converter wrote: pass `out_json` and `image_dir` to `CocoDataset`."""

    out_json: Path
    image_dir: Path
    num_images: int
    num_annotations: int
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)  # of class_names, in order
    classes_found: bool = False  # True: the classes came from the data, not from the caller

    def summary(self) -> str:
        text = (f"wrote {self.out_json}: {self.num_images} images, {self.num_annotations} instances, "
                f"{len(self.class_names)} classes {self.class_names}; images are under {self.image_dir}")
        if self.classes_found:
            text += (f"\ncategory ids 1..{len(self.class_names)} follow the sorted class names found here; "
                     f"convert your other splits with --categories-from {self.out_json} so the ids match")
        if self.skipped:
            text += f"\nskipped {len(self.skipped)} bad items:" + "".join(
                f"\n  {what}: {why}" for what, why in self.skipped[:20])
        return text


def categories_from(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """(class names, category ids) of an existing COCO file, so another split converted with
    them gets the same ids (`--categories-from`)."""
    from .coco import read_coco_json

    categories = read_coco_json(path).get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{path}: no 'categories' list to take the category ids from")
    try:
        names, ids = [str(c["name"]) for c in categories], [int(c["id"]) for c in categories]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: each category needs an 'id' and a 'name' ({type(e).__name__}: {e})") from None
    for what, values in (("name", names), ("id", ids)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise DataError(f"{path}: category {what}s repeat: {repeated}")
    return names, ids


class _CocoBuilder:
    def __init__(self, class_names: Sequence[str] | None, skip_bad: bool,
                 category_ids: Sequence[int] | None = None) -> None:
        if category_ids is not None and (not class_names or len(category_ids) != len(class_names)):
            raise ValueError("category_ids needs one id per class name")
        self.fixed_classes = list(class_names) if class_names else None
        self.fixed_ids = list(category_ids) if category_ids is not None else None
        self.skip_bad = skip_bad
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []

    def bad(self, what: str, reason: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{what}: {reason} (pass skip_bad=True / --skip-bad to drop it)")
        self.skipped.append((what, reason))

    def add_image(self, file_name: str, height: int, width: int) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        return image_id

    def add_instance(self, image_id: int, class_name: str, segmentation: Any, what: str) -> None:
        """segmentation: list of flat polygons, or a bool/uint8 (H, W) mask array."""
        img = self.images[image_id - 1]
        height, width = img["height"], img["width"]
        if self.fixed_classes is not None and class_name not in self.fixed_classes:
            return self.bad(what, f"class {class_name!r} is not in the given classes {self.fixed_classes}")
        if isinstance(segmentation, np.ndarray):
            rle = mask_utils.encode(np.asfortranarray(segmentation.astype(np.uint8)))
            seg = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        else:
            for poly in segmentation:
                if len(poly) < 6:
                    return self.bad(what, f"polygon with {len(poly) // 2} points; at least 3 are needed")
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            seg = [[round(float(v), 2) for v in poly] for poly in segmentation]
        area = float(mask_utils.area(rle))
        if area <= 0:
            return self.bad(what, "empty mask (zero area inside the image)")
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image_id, "category_id": class_name,
            "segmentation": seg, "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "area": area, "iscrowd": 0,
        })

    def write(self, out_json: str | os.PathLike, image_dir: Path) -> ConversionResult:
        # numeric class names (Kaggle ClassId) sort as numbers, so "10" comes after "2"
        names = self.fixed_classes or sorted(
            {a["category_id"] for a in self.annotations}, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))
        if not names:
            names = ["object"]  # COCO needs at least one category even with only negatives
        ids = self.fixed_ids or list(range(1, len(names) + 1))
        cat_id = dict(zip(names, ids))
        for a in self.annotations:
            a["category_id"] = cat_id[a["category_id"]]
        data = {
            "info": {"description": "converted by maskrcnn convert"}, "licenses": [],
            "images": self.images, "annotations": self.annotations,
            "categories": [{"id": cat_id[n], "name": n, "supercategory": ""} for n in names],
        }
        path = write_json_atomic(data, out_json)
        return ConversionResult(path, image_dir, len(self.images), len(self.annotations), list(names), self.skipped,
                                ids, classes_found=self.fixed_classes is None)


def _need_dir(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return folder


def _rel(path: Path, root: Path) -> str:
    """`path` relative to `root` for a `file_name`; absolute when it lies outside (only
    reachable with allow_outside), so that no `..` name is written."""
    rel = Path(os.path.relpath(path, root)).as_posix()
    return os.path.abspath(path) if rel == ".." or rel.startswith("../") else rel


def _find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if (folder / (stem + ext)).is_file():
            return folder / (stem + ext)
    return None


def _read_mask_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except Exception as e:
        raise DataError(f"{path}: cannot read mask image ({type(e).__name__}: {e})") from None
    return (arr.any(axis=-1) if arr.ndim == 3 else arr != 0)


# ---------------------------------------------------------------------- LabelMe

def _labelme_parts(shape: dict[str, Any], height: int, width: int) -> list | np.ndarray | str:
    """One LabelMe shape -> list of polygons, an (H, W) mask, or a string saying why it is skipped."""
    kind = shape.get("shape_type") or "polygon"
    pts = shape.get("points") or []
    try:
        if not isinstance(pts, list) or not all(isinstance(p, (list, tuple)) and len(p) >= 2 for p in pts):
            raise ValueError
        flat = [float(v) for p in pts for v in p[:2]]
        if not all(math.isfinite(v) for v in flat):
            raise ValueError
    except (TypeError, ValueError):
        # a malformed shape is an error, not a shape kind to pass over silently
        raise DataError(f"bad points {pts!r:.60}: expected a list of [x, y] number pairs") from None
    if kind == "polygon":
        return [flat]
    if kind == "rectangle" and len(pts) == 2:
        (x1, y1), (x2, y2) = pts[0][:2], pts[1][:2]
        return [[x1, y1, x2, y1, x2, y2, x1, y2]]
    if kind == "circle" and len(pts) == 2:
        (cx, cy), (px, py) = pts[0][:2], pts[1][:2]
        r = math.hypot(px - cx, py - cy)
        angles = [t * math.pi / 16 for t in range(32)]
        return [[v for a in angles for v in (cx + r * math.cos(a), cy + r * math.sin(a))]]
    if kind == "mask" and shape.get("mask") and len(pts) == 2:
        # LabelMe >= 5.3: a base64 PNG of the region inside the box given by the two points
        try:
            part = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))).astype(bool)
        except Exception as e:
            raise DataError(f"cannot decode the base64 mask ({type(e).__name__}: {e})") from None
        if part.ndim == 3:
            part = part.any(axis=-1)
        x0, y0 = int(pts[0][0]), int(pts[0][1])
        full = np.zeros((height, width), dtype=bool)
        h, w = part[: height - y0, : width - x0].shape
        full[y0:y0 + h, x0:x0 + w] = part[:h, :w]
        return full
    return f"shape_type {kind!r} is not a region"


def _labelme_image_path(named: str, json_file: Path, folder: Path, allow_outside: bool) -> Path:
    """A LabelMe `imagePath` (relative to its JSON file; backslashes from Windows) as a path,
    refused with DataError when absolute or outside `folder`, unless `allow_outside`."""
    text = named.replace("\\", "/")
    if Path(text).is_absolute() or re.match(r"^[A-Za-z]:", text):
        return inside_folder(text, folder, allow_outside=allow_outside)  # raises unless allowed
    try:
        return inside_folder(os.path.join(_rel(json_file.parent, folder), text), folder,
                             allow_outside=allow_outside)
    except DataError:
        raise DataError(f"{named!r} points outside {folder} (through '..')") from None


def labelme_to_coco(
    folder: str | os.PathLike, out_json: str | os.PathLike, *,
    class_names: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
    skip_bad: bool = False, allow_outside: bool = False, encoding: str | None = None,
) -> ConversionResult:
    """Convert a folder of LabelMe JSON files (searched recursively) into one COCO JSON.

    Images are found through each file's `imagePath` (relative to the JSON file, and inside
    `folder` unless `allow_outside`), else as an image with the JSON's stem beside it;
    `file_name`s in the output are relative to `folder`. `class_names` fixes the category
    order (ids 1..K, so train and val conversions agree; `category_ids` gives other ids, e.g.
    those of `categories_from(train.json)`); by default the labels found, sorted, are used. `encoding`: of the JSON files (default: UTF-8, or as their byte-order mark says).
    """
    folder = _need_dir(folder)
    files = sorted(p for p in folder.rglob("*.json") if p.resolve() != Path(out_json).resolve())
    if not files:
        raise DataError(f"{folder}: no LabelMe .json files found")
    builder = _CocoBuilder(class_names, skip_bad, category_ids)
    for jf in files:
        try:
            data = json.loads(read_text(jf, encoding=encoding, what="LabelMe file"))
        except json.JSONDecodeError as e:
            raise DataError(f"{jf}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            builder.bad(str(jf), "not a LabelMe file (no 'shapes' list)")
            continue
        named, refused = data.get("imagePath"), None
        image_path = None
        if named:
            try:
                image_path = _labelme_image_path(str(named), jf, folder, allow_outside)
            except DataError as e:
                refused = f"imagePath {e}"
        if image_path is None or not image_path.is_file():
            image_path = _find_image(jf.parent, jf.stem) or image_path
        if image_path is None or not image_path.is_file():
            why = (f"{refused} (--allow-outside-paths to follow it), and no image named {jf.stem}.* beside it"
                   if refused else f"image {named!r} not found next to it")
            builder.bad(str(jf), why)
            continue
        _, (height, width) = image_sizes(image_path)  # LabelMe shows images EXIF-rotated
        if (data.get("imageHeight"), data.get("imageWidth")) not in ((None, None), (height, width)):
            builder.bad(str(jf), f"imageHeight x imageWidth {data['imageHeight']}x{data['imageWidth']} "
                                 f"differs from {image_path.name} ({height}x{width})")
            continue
        image_id = builder.add_image(_rel(image_path, folder), height, width)
        groups: dict[tuple[str, Any], list] = {}
        for k, shape in enumerate(data["shapes"]):
            if not isinstance(shape, dict):
                builder.bad(f"{jf}: shape {k}", f"not a JSON object: {shape!r:.60}")
                continue
            what = f"{jf}: shape {k} ({shape.get('label')!r})"
            try:
                parts = _labelme_parts(shape, height, width)
            except DataError as e:
                builder.bad(what, str(e))
                continue
            if isinstance(parts, str):
                builder.skipped.append((what, parts))  # points/lines are not errors, just not masks
                continue
            # shapes with the same label and group_id are the parts of one object
            key = (str(shape.get("label")), shape["group_id"] if shape.get("group_id") is not None else ("k", k))
            groups.setdefault(key, []).append((what, parts))
        for (label, _), members in groups.items():
            what = members[0][0]
            if all(isinstance(p, list) for _, p in members):
                builder.add_instance(image_id, label, [poly for _, p in members for poly in p], what)
                continue
            union = np.zeros((height, width), dtype=bool)
            for _, p in members:
                if isinstance(p, list):
                    if any(len(poly) < 6 for poly in p):
                        continue  # add_instance reports short polygons; skip the bad part here
                    p = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(p, height, width))).astype(bool)
                union |= p
            builder.add_instance(image_id, label, union, what)
    return builder.write(out_json, folder)


# ---------------------------------------------------------------------- per-instance mask PNGs

def mask_pngs_to_coco(
    folder: str | os.PathLike, out_json: str | os.PathLike, *,
    class_names: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
    default_class: str = "object", skip_bad: bool = False,
) -> ConversionResult:
    """Convert per-instance binary mask PNGs into COCO (layout in the module docstring).

    Masks are stored as compressed RLE, exactly as drawn (no polygon approximation).
    """
    folder = _need_dir(folder)
    pairs: list[tuple[Path, Path]] = []  # (image file, folder of its instance masks)
    if (folder / "images").is_dir():
        for img in sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            pairs.append((img, folder / "masks" / img.stem))
        if (folder / "masks").is_dir():
            known = {img.stem for img, _ in pairs}
            orphans = sorted(d.name for d in (folder / "masks").iterdir() if d.is_dir() and d.name not in known)
            if orphans:
                raise DataError(f"{folder / 'masks'}: mask folders without an image in images/: {orphans[:10]}")
    else:  # Data Science Bowl 2018: NAME/images/NAME.png + NAME/masks/*.png
        for sub in sorted(d for d in folder.iterdir() if d.is_dir()):
            img = _find_image(sub / "images", sub.name)
            if img is None:
                raise DataError(f"{sub}: expected {sub / 'images' / (sub.name + '.png')}")
            pairs.append((img, sub / "masks"))
    if not pairs:
        raise DataError(f"{folder}: no images found (expected images/NAME.png + masks/NAME/CLASS_K.png)")

    builder = _CocoBuilder(class_names, skip_bad, category_ids)
    for img, mask_dir in pairs:
        raw, oriented = image_sizes(img)
        mask_files = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
        masks = [(m, _read_mask_png(m)) for m in mask_files]
        # Masks drawn on the EXIF-rotated picture match the oriented size; masks made from the
        # stored pixels match the raw size. Record whichever the masks agree with.
        size = oriented
        if masks and masks[0][1].shape == raw:
            size = raw
        image_id = builder.add_image(_rel(img, folder), *size)
        for m, arr in masks:
            if arr.shape != size:
                builder.bad(str(m), f"mask is {arr.shape[0]}x{arr.shape[1]} (HxW) "
                                    f"but {img.name} is {size[0]}x{size[1]}")
                continue
            match = _CLASS_K.match(m.stem)
            builder.add_instance(image_id, match["cls"] if match else default_class, arr, str(m))
    return builder.write(out_json, folder)


# ---------------------------------------------------------------------- Kaggle CSV

def rle_csv_to_coco(
    csv_file: str | os.PathLike, image_dir: str | os.PathLike, out_json: str | os.PathLike, *,
    class_name: str = "object", class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None, skip_bad: bool = False, allow_outside: bool = False,
    encoding: str | None = None,
) -> ConversionResult:
    """Convert a Kaggle run-length CSV (`ImageId,EncodedPixels`, one row per instance) into COCO.

    `ImageId` is looked up in `image_dir` as given, then with an image extension added, then as
    NAME/images/NAME.png (Data Science Bowl 2018); it must stay inside `image_dir` unless
    `allow_outside`. Rows with an empty `EncodedPixels` list images without objects. Image
    sizes come from the files (run lengths need H to decode). `encoding`: of the CSV (default:
    UTF-8, or as its byte-order mark says, as Excel writes it). `class_names` (with optional
    `category_ids`) fixes the classes: the ClassId values, or the one class of a CSV without
    that column.
    """
    csv_file, image_dir = Path(csv_file), _need_dir(image_dir)
    text = read_text(csv_file, encoding=encoding, what="CSV file")
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark decoded with an explicit encoding
    reader = csv.DictReader(io.StringIO(text))
    columns = {c.strip().lower(): c for c in reader.fieldnames or []}
    if "imageid" not in columns or "encodedpixels" not in columns:
        raise DataError(f"{csv_file}: expected columns ImageId,EncodedPixels, found {reader.fieldnames}")
    col_id, col_rle, col_cls = columns["imageid"], columns["encodedpixels"], columns.get("classid")

    if class_names is None and col_cls is None:
        class_names = [class_name]
    builder = _CocoBuilder(class_names, skip_bad, category_ids)
    ids: dict[str, int | None] = {}
    for line, row in enumerate(reader, start=2):  # line 1 is the header
        name = (row.get(col_id) or "").strip()
        what = f"{csv_file}:{line} (ImageId {name!r})"
        if name not in ids:
            try:
                path = inside_folder(name, image_dir, allow_outside=allow_outside)
            except DataError as e:
                builder.bad(what, f"ImageId {e} (--allow-outside-paths to follow it)")
                ids[name] = None
                continue
            if not path.is_file():
                path = _find_image(image_dir, name) or _find_image(image_dir / name / "images", name) or path
            if not path.is_file():
                builder.bad(what, f"no image {name!r} in {image_dir}")
                ids[name] = None
                continue
            raw, _ = image_sizes(path)  # run lengths index the stored pixel array
            ids[name] = builder.add_image(_rel(path, image_dir), *raw)
        image_id = ids[name]
        rle = (row.get(col_rle) or "").strip()
        if image_id is None or not rle:
            continue
        info = builder.images[image_id - 1]
        try:
            mask = decode_kaggle_rle(rle, (info["height"], info["width"]))
        except DataError as e:
            builder.bad(what, str(e))
            continue
        cls = class_name if col_cls is None else str(row.get(col_cls)).strip()
        builder.add_instance(image_id, cls, mask, what)
    return builder.write(out_json, image_dir)


# ---------------------------------------------------------------------- command line

def convert_main(argv: Sequence[str] | None = None) -> int:
    """`maskrcnn convert {labelme,masks,rle-csv} SRC --out FILE.json [...]`; returns an exit code."""
    parser = argparse.ArgumentParser(prog="maskrcnn convert",
                                     description="Convert annotations into COCO instance JSON.",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    p = sub.add_parser("labelme", formatter_class=HelpFormatter, help="a folder of LabelMe .json files")
    p.add_argument("src", help="folder with LabelMe .json files and their images")
    p = sub.add_parser("masks", formatter_class=HelpFormatter, help="per-instance mask PNGs: SRC/images/NAME.png + SRC/masks/NAME/CLASS_K.png")
    p.add_argument("src", help="folder with images/ and masks/ (or the DSB-2018 layout)")
    p.add_argument("--default-class", default="object", help="class of masks not named CLASS_K.png")
    p = sub.add_parser("rle-csv", formatter_class=HelpFormatter, help="Kaggle run-length CSV: ImageId,EncodedPixels")
    p.add_argument("src", help="the CSV file")
    p.add_argument("--images", required=True, help="folder with the images named in ImageId")
    p.add_argument("--class-name", default="object", help="name of the single class")
    for p in sub.choices.values():
        p.add_argument("--out", required=True, help="COCO JSON to write (atomically)")
        p.add_argument("--skip-bad", action="store_true", help="drop bad items and report them instead of stopping")
        if p.prog.split()[-1] != "masks":
            p.add_argument("--encoding", help="encoding of the text files read (default: UTF-8, or their byte-order mark's)")
            p.add_argument("--allow-outside-paths", action="store_true",
                           help="follow image paths that are absolute or leave the source folder through '..'")
        same_ids = p.add_mutually_exclusive_group()
        same_ids.add_argument("--classes", help="comma-separated class names, fixing category ids 1..K "
                                                "(give the same list for every split)")
        same_ids.add_argument("--categories-from", metavar="COCO.json",
                              help="take class names and category ids from this file, e.g. the training "
                                   "split converted before, so every split numbers the classes alike")
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    ids = None
    try:
        if args.categories_from:
            classes, ids = categories_from(args.categories_from)
        if args.format == "labelme":
            result = labelme_to_coco(args.src, args.out, class_names=classes, category_ids=ids, skip_bad=args.skip_bad,
                                     allow_outside=args.allow_outside_paths, encoding=args.encoding)
        elif args.format == "masks":
            result = mask_pngs_to_coco(args.src, args.out, class_names=classes, category_ids=ids,
                                       default_class=args.default_class, skip_bad=args.skip_bad)
        else:
            result = rle_csv_to_coco(args.src, args.images, args.out, class_name=args.class_name,
                                     class_names=classes, category_ids=ids,
                                     skip_bad=args.skip_bad, allow_outside=args.allow_outside_paths,
                                     encoding=args.encoding)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
