"""COCO instance-segmentation dataset.

Reads a COCO JSON (`images`, `annotations`, `categories`) and a folder of images, and yields
`(image, target)` pairs in the format the model's `forward(images, targets)` takes:

    image:  float32 (3, H, W), RGB in [0, 1]
    target: boxes    float32 (N, 4)  xyxy, absolute pixels, from the annotations' `bbox`
            labels   int64   (N,)    contiguous 1..C (0 is background, never used here)
            masks    uint8   (N, H, W)
            iscrowd  bool    (N,)    crowd regions: ignored in matching, never positives
            image_id int             the COCO image id
            orig_size (H, W)         size before any transform
        and, for a person-keypoints file (a category with a `keypoints` list of names):
            keypoints float32 (N, K, 3) (x, y, visibility 0/1/2); zeros for instances
                                     without keypoints (other categories)
            keypoint_flip int64 (K,) the keypoint each one becomes in a horizontal flip
                                     (left_* <-> right_* by name, or `keypoint_flip_map`)

Everything is checked when the dataset is built, so bad data is reported before training or
evaluation starts rather than hours in: the JSON (duplicate image, annotation or category
ids; RLE whose runs do not cover exactly the image; `file_name`s that leave the image folder),
and every image file's existence, header and size (only the header is read: about a
millisecond per image, in threads, with a progress bar on large sets). `verify_images()`
also decodes every image fully. Each error names the annotation file, the image id and file,
or the annotation id, and what is wrong.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from ..ops.keypoints import flip_indices
from ..io import (
    DataError,
    ImageLoadError,
    check_coco_rle,
    exif_transpose,
    image_sizes,
    inside_folder,
    load_image,
    open_image,
)
from ..ops.masks import chunk_ranges

__all__ = ["CocoDataset", "DataError", "read_coco_json", "BOX_TOLERANCE"]

# How far (pixels) a box may stick out of the image before it counts as bad. Annotation tools
# round vertices to integers and disagree on pixel-centre vs pixel-edge coordinates, which moves
# a correct box by up to a pixel on each side; anything beyond that is a real error.
BOX_TOLERANCE = 2.0
# Bad items listed in one error message; the rest are counted.
_MAX_LISTED = 10
# Datasets with more images than this show a progress bar while their files are checked.
_PROGRESS_FROM = 2000

Transform = Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]]


def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a COCO JSON file; malformed JSON raises `DataError` with the file and position."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        # json.loads reads UTF-8, UTF-16 and UTF-32 (with or without a byte-order mark)
        raise DataError(
            f"{path}: annotation file is not UTF-8, UTF-16 or UTF-32 JSON (byte 0x{e.object[e.start:e.start + 1].hex()} "
            f"at offset {e.start}); re-save it as UTF-8"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read annotation file ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'categories', got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or invalid '{key}' list (is this a COCO instances file?)")
    # Test-set image-info files have no annotations at all; treat them as unannotated images.
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return data


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class CocoDataset(Dataset):
    """COCO instance segmentation as a torch Dataset.

    Args:
        annotation_file: COCO instances JSON.
        image_dir: folder that the images' `file_name`s are relative to.
        transforms: callable `(image, target) -> (image, target)`, e.g. from `.transforms`.
        skip_bad: drop bad annotations and images (recorded in `skipped`) instead of raising.
            Duplicate ids are always an error: which of two entries is meant cannot be guessed,
            and COCO evaluation, which reads the same file, would count them wrongly.
        check_files: check at once that every image file exists, has a readable header and the
            JSON's size (default); False defers all of it to loading.
        allow_outside_image_dir: follow `file_name`s that are absolute or climb out of
            `image_dir` with `..` (refused by default: a JSON from elsewhere must not make us
            open arbitrary files).
        progress: show a progress bar while checking the files (None: for datasets of more
            than 2000 images, when stderr is a terminal).
        keypoint_flip_map: (name, name) pairs of keypoints that swap in a horizontal flip;
            default: `left_x` <-> `right_x` from the names (`ops.keypoints.flip_indices`).

    Labels are contiguous 1..C in order of increasing category id; `class_names[label - 1]` is
    a label's name and `label_to_category_id` maps back for writing COCO results.

    >>> ds = CocoDataset("data/annotations.json", "data/images")   # doctest: +SKIP
    >>> image, target = ds[0]                                      # doctest: +SKIP
    >>> image.shape, target["masks"].shape                         # doctest: +SKIP
    (torch.Size([3, 128, 128]), torch.Size([4, 128, 128]))
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        transforms: Transform | None = None,
        skip_bad: bool = False,
        check_files: bool = True,
        allow_outside_image_dir: bool = False,
        progress: bool | None = None,
        keypoint_flip_map: list[tuple[str, str]] | None = None,
    ) -> None:
        self.keypoint_flip_map = keypoint_flip_map
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.skip_bad = skip_bad
        self.allow_outside_image_dir = allow_outside_image_dir
        # (what, reason) for every annotation or image dropped under skip_bad. In DataLoader
        # worker processes, load-time skips land in the worker's copy; call `verify_images()`
        # in the main process to find them all up front.
        self.skipped: list[tuple[str, str]] = []
        self._bad_indices: set[int] = set()
        self._parse(read_coco_json(self.annotation_file))
        if check_files:
            self.check_files(progress=progress)

    # ------------------------------------------------------------------ parsing and validation

    def _fail_or_skip(self, bad: list[tuple[str, str]], kind: str) -> None:
        if not bad:
            return
        if self.skip_bad:
            self.skipped.extend(bad)
            return
        listed = "\n".join(f"  {what}: {why}" for what, why in bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DataError(
            f"{self.annotation_file}: {len(bad)} bad {kind}{'s' if len(bad) > 1 else ''} "
            f"(fix the data, or pass skip_bad=True / --skip-bad to drop bad items):\n{listed}{more}"
        )

    def _refuse_duplicates(self, entries: list[Any], kind: str) -> None:
        counts: dict[Any, int] = {}
        for entry in entries:
            if isinstance(entry, dict) and _is_int(entry.get("id")):
                counts[entry["id"]] = counts.get(entry["id"], 0) + 1
        repeated = sorted(i for i, n in counts.items() if n > 1)
        if repeated:
            listed = ", ".join(f"{i} ({counts[i]} times)" for i in repeated[:_MAX_LISTED])
            more = f" and {len(repeated) - _MAX_LISTED} more" if len(repeated) > _MAX_LISTED else ""
            raise DataError(
                f"{self.annotation_file}: duplicate {kind} ids {listed}{more}; every {kind} needs its own "
                f"id (COCO evaluation looks {kind}s up by id, so duplicates give wrong AP)"
            )

    def _parse(self, data: dict[str, Any]) -> None:
        src = self.annotation_file
        self._refuse_duplicates(data["categories"], "category")
        self._refuse_duplicates(data["images"], "image")
        self._refuse_duplicates(data.get("annotations", []), "annotation")
        categories = {}
        for c in data["categories"]:
            if not isinstance(c, dict) or not _is_int(c.get("id")):
                raise DataError(f"{src}: category without an integer 'id': {c!r}")
            if c["id"] in categories:
                raise DataError(f"{src}: category id {c['id']} appears twice")
            categories[c["id"]] = str(c.get("name", c["id"]))
        if not categories:
            raise DataError(f"{src}: no categories")
        # Sorted by id, so the same category set always gives the same labels.
        self._category_ids = sorted(categories)
        self._class_names = [categories[i] for i in self._category_ids]
        self._cat_to_label = {cid: k + 1 for k, cid in enumerate(self._category_ids)}
        self._parse_keypoint_categories(data["categories"])

        images: dict[int, dict[str, Any]] = {}
        paths: dict[int, Path] = {}
        dropped: set[Any] = set()  # ids of bad image entries; their annotations go with them
        bad_images: list[tuple[str, str]] = []
        for k, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not _is_int(img.get("id")):
                bad_images.append((f"images[{k}]", "no integer 'id'"))
                continue
            what = f"image id {img['id']} ({img.get('file_name')!r})"
            problem = None
            if not isinstance(img.get("file_name"), str) or not img["file_name"]:
                problem = "no 'file_name'"
            elif not (_is_int(img.get("width")) and _is_int(img.get("height"))):
                problem = "no integer 'width' and 'height'"
            elif img["width"] <= 0 or img["height"] <= 0:
                problem = f"zero-size image {img['width']}x{img['height']}"
            else:
                try:
                    paths[img["id"]] = inside_folder(img["file_name"], self.image_dir,
                                                     allow_outside=self.allow_outside_image_dir)
                except DataError as e:
                    problem = f"{e} (allow_outside_image_dir=True to follow it)"
                else:
                    images[img["id"]] = img
                    continue
            bad_images.append((what, problem))
            dropped.add(img["id"])
        self._fail_or_skip(bad_images, "image entry")

        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        bad_anns: list[tuple[str, str]] = []
        for k, ann in enumerate(data.get("annotations", [])):
            if not isinstance(ann, dict):
                bad_anns.append((f"annotations[{k}]", "not a JSON object"))
                continue
            image_id = ann.get("image_id")
            image_id = image_id if _is_int(image_id) else None  # ids are ints; a list is not even hashable
            img = images.get(image_id)
            aid = ann.get("id", f"#{k}")
            if img is None and image_id in dropped:
                continue
            if img is None:
                bad_anns.append((f"annotation id {aid}", f"refers to unknown image id {ann.get('image_id')!r}"))
                continue
            record, problem = self._check_annotation(ann, img)
            if problem is not None:
                bad_anns.append((f"annotation id {aid} (image id {img['id']}, {img['file_name']!r})", problem))
            else:
                per_image[img["id"]].append(record)
        self._fail_or_skip(bad_anns, "annotation")

        # Sorted by id so the sample order does not depend on how the JSON was written.
        self._images = [images[i] for i in sorted(images)]
        self._anns = [per_image[i] for i in sorted(images)]
        self._paths = [paths[i] for i in sorted(images)]
        if not self._images:
            raise DataError(f"{src}: no usable images")
        if "annotations" not in data:
            warnings.warn(f"{src} has no 'annotations' list (an image-info file?): every image "
                          "counts as having no objects", stacklevel=3)
        elif not any(self._anns):
            left = " left after skipping bad ones" if bad_anns else ""
            warnings.warn(f"{src} has no annotations{left}: every image counts as having no objects",
                          stacklevel=3)

    def _parse_keypoint_categories(self, categories: list[dict[str, Any]]) -> None:
        """Keypoint names and skeleton from the categories that have `keypoints` (COCO's person
        category); all such categories must name the same keypoints."""
        src = self.annotation_file
        self._keypoint_names: list[str] | None = None
        self._skeleton: list[list[int]] | None = None
        self._keypoint_categories: set[int] = set()
        for c in sorted(categories, key=lambda c: c["id"]):
            names = c.get("keypoints")
            if names is None:
                continue
            if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
                raise DataError(f"{src}: category id {c['id']}: 'keypoints' must be a non-empty list of names, got {names!r}")
            if len(set(names)) != len(names):
                raise DataError(f"{src}: category id {c['id']}: keypoint names repeat: {names}")
            if self._keypoint_names is not None and names != self._keypoint_names:
                raise DataError(f"{src}: category id {c['id']} names keypoints {names}, another category "
                                f"{self._keypoint_names}; one model predicts one keypoint set")
            skeleton = c.get("skeleton", [])
            k = len(names)
            if not (isinstance(skeleton, list) and all(
                    isinstance(e, list) and len(e) == 2 and all(_is_int(i) and 1 <= i <= k for i in e) for e in skeleton)):
                raise DataError(f"{src}: category id {c['id']}: 'skeleton' must be a list of [i, j] keypoint "
                                f"numbers in 1..{k}, got {skeleton!r}")
            self._keypoint_names, self._skeleton = list(names), [list(e) for e in skeleton]
            self._keypoint_categories.add(c["id"])
        if self._keypoint_names is not None:
            try:
                self._keypoint_flip = flip_indices(self._keypoint_names, self.keypoint_flip_map)
            except ValueError as e:
                raise DataError(f"{src}: keypoint_flip_map: {e}") from None

    def _check_keypoints(self, ann: dict[str, Any], width: int, height: int) -> tuple[list | None, str | None]:
        """(K, 3) keypoints of an annotation (zeros when it has none), or what is wrong."""
        k = len(self._keypoint_names)
        values = ann.get("keypoints")
        if values is None:
            return [[0.0, 0.0, 0.0]] * k, None
        if not (isinstance(values, list) and all(_is_number(v) for v in values)):
            return None, "keypoints must be a flat list of numbers [x1, y1, v1, x2, ...]"
        if ann.get("category_id") not in self._keypoint_categories:
            if not any(values):
                return [[0.0, 0.0, 0.0]] * k, None
            return None, f"has keypoints but its category {ann.get('category_id')} defines none"
        if len(values) != 3 * k:
            return None, f"keypoints has {len(values)} numbers; {k} keypoints need {3 * k} (x, y, visibility each)"
        triples = [values[i:i + 3] for i in range(0, len(values), 3)]
        for j, (x, y, v) in enumerate(triples):
            if v not in (0, 1, 2):
                return None, (f"keypoint {j} ({self._keypoint_names[j]}) has visibility {v!r}; "
                              "COCO's are 0 (not labelled), 1 (labelled, hidden), 2 (visible)")
            t = BOX_TOLERANCE
            if v > 0 and not (-t <= x <= width + t and -t <= y <= height + t):
                return None, f"keypoint {j} ({self._keypoint_names[j]}) at ({x}, {y}) lies outside the {width}x{height} image"
        labelled = sum(1 for _, _, v in triples if v > 0)
        if "num_keypoints" in ann and ann["num_keypoints"] != labelled:
            return None, f"num_keypoints is {ann['num_keypoints']!r} but {labelled} keypoints have visibility > 0"
        return [[float(x), float(y), float(v)] for x, y, v in triples], None

    def _check_annotation(self, ann: dict[str, Any], img: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Normalize one annotation; return (record, None) or ({}, what is wrong)."""
        width, height = img["width"], img["height"]
        cid = ann.get("category_id")
        if not _is_int(cid) or cid not in self._cat_to_label:
            return {}, f"unknown category id {cid!r} (categories are {self._category_ids[:20]})"
        if ann.get("iscrowd", 0) not in (0, 1):  # True/False compare equal to 1/0
            return {}, f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}"
        iscrowd = bool(ann.get("iscrowd", 0))

        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg and all(_is_number(v) for v in seg):
            seg = [seg]  # a single flat polygon; pycocotools wants a list of polygons
        keypoints = None
        if self._keypoint_names is not None:
            keypoints, problem = self._check_keypoints(ann, width, height)
            if problem is not None:
                return {}, problem
        if seg is None or (isinstance(seg, list) and not seg):
            # a keypoint annotation needs no mask (a keypoint-only model): the box stands in
            if not iscrowd and not (keypoints and any(v > 0 for _, _, v in keypoints)):
                return {}, "no segmentation"
            seg = None  # crowd box without a mask: the box itself is the ignore region
        elif isinstance(seg, list):
            for j, poly in enumerate(seg):
                if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                    return {}, f"polygon {j} is not a list of numbers"
                # pycocotools reads a 4-number list as a box, so 2-point "polygons" must stop here.
                if len(poly) % 2 or len(poly) < 6:
                    return {}, f"polygon {j} has {len(poly) / 2:g} points; a polygon needs at least 3 (x, y) pairs"
        elif isinstance(seg, dict):
            # pycocotools decodes runs that do not add up to H * W into uninitialised memory
            problem = check_coco_rle(seg, height, width)
            if problem is not None:
                return {}, problem
            if isinstance(seg["counts"], bytes):
                seg = {"size": seg["size"], "counts": seg["counts"].decode("ascii")}
        else:
            return {}, f"segmentation of unknown type {type(seg).__name__}"

        bbox = ann.get("bbox")
        if bbox is None and seg is not None:
            bbox = mask_utils.toBbox(_to_rle(seg, height, width)).tolist()
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            return {}, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            return {}, f"zero-area box {bbox} (width and height must be > 0)"
        area = ann.get("area")
        if area is not None and (not _is_number(area) or area <= 0):
            return {}, f"zero-area annotation (area={area!r})"
        tol = BOX_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return {}, f"box {bbox} lies outside the {width}x{height} image"
        box = (max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height)))
        if seg is None:
            x1, y1, x2, y2 = box
            seg = [[x1, y1, x2, y1, x2, y2, x1, y2]]
        return {
            "id": ann.get("id"),
            "box": box,
            "label": self._cat_to_label[cid],
            "iscrowd": iscrowd,
            "segmentation": seg,
            "keypoints": keypoints,
        }, None

    # ------------------------------------------------------------------ metadata

    @property
    def class_names(self) -> list[str]:
        """Category names; index 0 is label 1 (background has no entry)."""
        return list(self._class_names)

    @property
    def keypoint_names(self) -> list[str] | None:
        """The keypoint categories' `keypoints` names; None when there are none."""
        return None if self._keypoint_names is None else list(self._keypoint_names)

    @property
    def keypoint_skeleton(self) -> list[list[int]] | None:
        """The keypoint categories' `skeleton`: [i, j] pairs of 1-based keypoint numbers."""
        return None if self._skeleton is None else [list(e) for e in self._skeleton]

    @property
    def keypoint_flip(self) -> list[int] | None:
        """For a horizontal flip: the index of the keypoint each keypoint becomes."""
        return None if self._keypoint_names is None else list(self._keypoint_flip)

    @property
    def category_ids(self) -> list[int]:
        """COCO category ids; index 0 is label 1."""
        return list(self._category_ids)

    @property
    def num_classes(self) -> int:
        """Number of object classes C (background not counted)."""
        return len(self._category_ids)

    @property
    def category_id_to_label(self) -> dict[int, int]:
        return dict(self._cat_to_label)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return {label: cid for cid, label in self._cat_to_label.items()}

    @property
    def image_ids(self) -> list[int]:
        return [img["id"] for img in self._images]

    def image_info(self, index: int) -> dict[str, Any]:
        """The JSON `images` entry of sample `index`."""
        return dict(self._images[index])

    def annotations(self, index: int) -> list[dict[str, Any]]:
        """Sample `index`'s checked annotations, as the targets are made from them: "id", "box"
        (x1, y1, x2, y2 in pixels, clipped to the image), "label", "iscrowd", "segmentation",
        "keypoints" (None without keypoint categories)."""
        return [dict(a) for a in self._anns[index]]

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """(H, W) from the JSON without opening the file (torchvision's name, for aspect-ratio grouping)."""
        img = self._images[index]
        return img["height"], img["width"]

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return (
            f"CocoDataset({str(self.annotation_file)!r}, images={len(self)}, "
            f"classes={self.num_classes}, skipped={len(self.skipped)})"
        )

    # ------------------------------------------------------------------ loading

    def _load_pil(self, index: int):
        info = self._images[index]
        path = self._paths[index]
        try:
            # No pixel limit beyond Pillow's bomb check: training images are the user's own.
            raw = open_image(path, max_pixels=None)
        except ImageLoadError as e:
            raise DataError(f"image id {info['id']}: {e}") from None
        want = (info["width"], info["height"])
        oriented = exif_transpose(raw, name=str(path))  # `raw` itself when already upright
        # Annotations usually follow the EXIF-rotated picture (what tools display); if the JSON
        # size matches only the stored pixels, the annotator worked on those, so keep them.
        if oriented.size == want:
            return oriented
        if raw.size == want:
            return raw
        raise DataError(
            f"{path} (image id {info['id']}): file is {oriented.width}x{oriented.height} (WxH) "
            f"but {self.annotation_file.name} says {info['width']}x{info['height']}"
        )

    def _load(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        info, anns = self._images[index], self._anns[index]
        path = self._paths[index]
        try:
            # _load_pil already chose the orientation the JSON sizes match: exif=False
            image = load_image(self._load_pil(index), max_pixels=None, name=str(path), exif=False)
        except ImageLoadError as e:  # pixels of an unusable range, e.g. a 0..255 float TIFF
            raise DataError(f"image id {info['id']}: {e}") from None
        height, width = info["height"], info["width"]
        if anns:
            masks = torch.empty((len(anns), height, width), dtype=torch.uint8)
            # decoded a chunk at a time: pycocotools gives (H, W, N) and the (N, H, W) copy would
            # double the memory of an image with thousands of instances
            for part in chunk_ranges(len(anns), height * width):
                try:
                    rles = [_to_rle(a["segmentation"], height, width) for a in anns[part]]
                    decoded = mask_utils.decode(rles)  # (H, W, n), Fortran order
                except Exception as e:  # pycocotools raises bare Exceptions on corrupt RLE strings
                    ids = [a["id"] for a in anns[part]]
                    raise DataError(
                        f"{self.annotation_file}: image id {info['id']} ({info['file_name']!r}): "
                        f"cannot decode the masks of annotations {ids} ({e})"
                    ) from None
                masks[part] = torch.from_numpy(decoded.transpose(2, 0, 1))  # (H, W, n) -> (n, H, W)
        else:
            masks = torch.zeros((0, height, width), dtype=torch.uint8)
        target = {
            "boxes": torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            "masks": masks,
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.bool),
            "image_id": int(info["id"]),
            "orig_size": (height, width),
        }
        if self._keypoint_names is not None:
            k = len(self._keypoint_names)
            target["keypoints"] = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, k, 3)
            target["keypoint_flip"] = torch.tensor(self._keypoint_flip, dtype=torch.int64)
        return image, target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if index < 0:
            index += len(self)
        if not self.skip_bad:
            image, target = self._load(index)
        else:
            # Replace a bad sample by the next good one: deterministic, so a resumed run sees
            # the same data, and the batch keeps its size.
            for step in range(len(self)):
                j = (index + step) % len(self)
                if j in self._bad_indices:
                    continue
                try:
                    image, target = self._load(j)
                    break
                except DataError as e:
                    self._bad_indices.add(j)
                    info = self._images[j]
                    self.skipped.append((f"image id {info['id']} ({info['file_name']!r})", str(e)))
                    warnings.warn(f"skipping bad sample: {e}", stacklevel=2)
            else:
                raise DataError(f"{self.annotation_file}: no image in the dataset could be loaded")
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def verify_images(self, *, num_workers: int = 4) -> list[tuple[str, str]]:
        """Open and decode every image, checking it exists, is readable and has the JSON's size.

        Returns the problems found as (what, reason). Without skip_bad any problem raises one
        `DataError` listing them; with skip_bad the bad images are removed from the dataset and
        added to `skipped`. Decoding runs in threads (PIL releases the GIL while decoding).
        """
        def check(index: int) -> tuple[str, str] | None:
            try:
                self._load_pil(index)
            except DataError as e:
                info = self._images[index]
                return f"image id {info['id']} ({info['file_name']!r})", str(e)
            return None

        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            results = list(pool.map(check, range(len(self))))
        return self._drop(results)

    def check_files(self, *, num_workers: int = 8, progress: bool | None = None) -> list[tuple[str, str]]:
        """Check that every image file exists, has a readable header and the JSON's size (as
        stored, or turned upright by its EXIF orientation), reading headers only. Called by the
        constructor. Returns the problems as (what, reason); without skip_bad any problem
        raises one `DataError` listing them, with skip_bad the bad images are dropped."""
        def check(index: int) -> tuple[str, str] | None:
            info, path = self._images[index], self._paths[index]
            what = f"image id {info['id']} ({info['file_name']!r})"
            try:
                stored, oriented = image_sizes(path)
            except ImageLoadError as e:
                return what, str(e)
            want = (info["height"], info["width"])
            if want not in (stored, oriented):
                return what, (f"{path}: file is {oriented[1]}x{oriented[0]} (WxH) but "
                              f"{self.annotation_file.name} says {info['width']}x{info['height']}")
            return None

        from tqdm import tqdm

        # tqdm's disable=None: only on a terminal
        disable = (None if len(self) > _PROGRESS_FROM else True) if progress is None else not progress

        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            results = list(tqdm(pool.map(check, range(len(self))), total=len(self), unit="img",
                                desc=f"checking {self.annotation_file.name}'s images", leave=False,
                                disable=disable))
        return self._drop(results)

    def _drop(self, results: list[tuple[str, str] | None]) -> list[tuple[str, str]]:
        """Raise for (or, under skip_bad, drop) the images whose check returned a problem."""
        problems = [r for r in results if r is not None]
        if problems:
            self._fail_or_skip(problems, "image")
            keep = [i for i, r in enumerate(results) if r is None]
            self._images = [self._images[i] for i in keep]
            self._anns = [self._anns[i] for i in keep]
            self._paths = [self._paths[i] for i in keep]
            self._bad_indices.clear()
            if not self._images:
                raise DataError(f"{self.annotation_file}: no image in the dataset could be loaded")
        return problems


def _to_rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """A validated COCO segmentation (polygons, uncompressed or compressed RLE) -> one RLE."""
    if isinstance(seg, list):  # polygons: rasterize each, then union
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):  # uncompressed RLE, as COCO stores crowd regions
        return mask_utils.frPyObjects(seg, height, width)
    return {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
