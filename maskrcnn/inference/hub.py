"""Named weights ("torchvision:maskrcnn_resnet50_fpn", ..._v2, "torchvision:fasterrcnn_resnet50_fpn",
..._v2, "torchvision:keypointrcnn_resnet50_fpn", "detectron2:mask_rcnn_R_50_FPN_3x", ...): where they live, a local cache, and a download with a hash check.

    >>> path = weights_path("torchvision:maskrcnn_resnet50_fpn")   # doctest: +SKIP
    PosixPath('/home/me/.cache/maskrcnn/torchvision/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth')

The cache folder is `$MASKRCNN_CACHE`, else `~/.cache/maskrcnn`. A file torchvision already
downloaded (`$TORCH_HOME/hub/checkpoints/`, default `~/.cache/torch/hub/checkpoints/`) is used
as it is, so torchvision users do not download 170 MB twice. Downloads go to a temporary file
in the cache folder, are hashed while they stream, and are renamed into place only when the
hash matches, so the cache never holds a partial or corrupt file under the final name.

Offline (no network, `MASKRCNN_OFFLINE=1`, or `download=False`), `WeightsUnavailableError`
says which URL to fetch and the exact path to put the file at.

Detectron2's model zoo publishes no hashes (its file names end in an id, not a digest), so its
files are checked by what they contain instead: the restricted unpickler that reads them
(checkpoint/detectron2.py) builds numpy arrays only and cannot run code, and loading checks
every tensor's name and shape.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..io import atomic_open

__all__ = [
    "COCO_CATEGORY_NAMES", "NAMED_WEIGHTS", "NAME_PREFIXES", "NamedWeights", "WeightsUnavailableError",
    "cache_dir", "download_file", "file_sha256", "is_named", "weights_path",
]

# torchvision's COCO label list (torchvision.models._meta._COCO_CATEGORIES): index = label =
# COCO category id; "N/A" fills the 11 ids COCO never used, "__background__" is label 0.
COCO_CATEGORY_NAMES = [
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]
assert len(COCO_CATEGORY_NAMES) == 91


@dataclass(frozen=True)
class NamedWeights:
    """A published checkpoint. `sha256_prefix` is the hash prefix in the file name, which is
    what torchvision's own `check_hash` compares (the full digest is not published)."""

    url: str
    sha256_prefix: str | None  # None: not published (Detectron2)
    variant: str  # from_torchvision's: "v1", "v2", "faster", "faster_v2", "keypoint" ("d2": Detectron2's)
    class_names: tuple[str, ...]  # index 0 is label 1 (background has no entry)
    kind: str = "torchvision"  # or "detectron2": also the cache sub-folder

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    # box AP 37.9 / mask AP 34.6 on COCO val2017 (torchvision's model card)
    "torchvision:maskrcnn_resnet50_fpn": NamedWeights(
        url="https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        sha256_prefix="bf2d0c1e",
        variant="v1",
        class_names=tuple(COCO_CATEGORY_NAMES[1:]),
    ),
    # box AP 47.4 / mask AP 41.8
    "torchvision:maskrcnn_resnet50_fpn_v2": NamedWeights(
        url="https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        sha256_prefix="73cbd019",
        variant="v2",
        class_names=tuple(COCO_CATEGORY_NAMES[1:]),
    ),
    # torchvision's Faster R-CNN (box AP 37.0, v2 46.7) and Keypoint R-CNN (box AP 54.6 /
    # keypoint AP 65.0; its COCO_V1, the DEFAULT, not the older COCO_LEGACY -9f466800) weights:
    # URLs as in torchvision/models/detection/faster_rcnn.py and keypoint_rcnn.py (0.29.1).
    # The keypoint model has classes background and person only.
    **{
        f"torchvision:{name}": NamedWeights(
            url=f"https://download.pytorch.org/models/{name}_coco-{prefix}.pth",
            sha256_prefix=prefix, variant=variant,
            class_names=("person",) if variant == "keypoint" else tuple(COCO_CATEGORY_NAMES[1:]),
        )
        for name, prefix, variant in (
            ("fasterrcnn_resnet50_fpn", "258fb6c6", "faster"),
            ("fasterrcnn_resnet50_fpn_v2", "dd69338a", "faster_v2"),
            ("keypointrcnn_resnet50_fpn", "fc266e95", "keypoint"),
        )
    },
    # Detectron2's model zoo (COCO-InstanceSegmentation, FPN): box AP 38.6 / mask AP 35.2,
    # 41.0 / 37.2, 42.9 / 38.6 (its MODEL_ZOO.md). Labels are Detectron2's class index 0..79.
    **{
        f"detectron2:{name}": NamedWeights(
            url=f"https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/{name}/{run}/model_final_{suffix}.pkl",
            sha256_prefix=None, variant="d2", kind="detectron2",
            class_names=tuple(n for n in COCO_CATEGORY_NAMES[1:] if n != "N/A"),
        )
        for name, run, suffix in (
            ("mask_rcnn_R_50_FPN_1x", 137260431, "a54504"),
            ("mask_rcnn_R_50_FPN_3x", 137849600, "f10217"),
            ("mask_rcnn_R_101_FPN_3x", 138205316, "a3ec72"),
        )
    },
}
NAME_PREFIXES = ("torchvision:", "detectron2:")


def is_named(source) -> bool:
    """Whether `source` is a weights name ("torchvision:...", "detectron2:...") rather than a path."""
    return isinstance(source, str) and source.startswith(NAME_PREFIXES)


class WeightsUnavailableError(RuntimeError):
    """Named weights that are neither cached nor downloadable right now."""


def cache_dir() -> Path:
    """`$MASKRCNN_CACHE`, else `~/.cache/maskrcnn` (created on first download, not here)."""
    env = os.environ.get("MASKRCNN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "maskrcnn"


def _torch_hub_checkpoints() -> Path:
    # torch.hub.get_dir() without importing torch.hub's machinery: $TORCH_HOME/hub/checkpoints
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch"
    )
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _lookup(name: str) -> NamedWeights:
    if name not in NAMED_WEIGHTS:
        raise ValueError(f"unknown named weights {name!r}; known: {', '.join(NAMED_WEIGHTS)}")
    return NAMED_WEIGHTS[name]


def _offline_message(name: str, entry: NamedWeights, target: Path, reason: str) -> str:
    check = f"its SHA-256 must start with {entry.sha256_prefix}; " if entry.sha256_prefix else ""
    return (
        f"{name}: {reason}.\n"
        f"Fetch {entry.url}\n"
        f"and put it at {target}\n"
        f"  e.g. mkdir -p '{target.parent}' && curl -L -o '{target}' '{entry.url}'\n"
        f"({check}set MASKRCNN_CACHE to use another "
        f"cache folder, or pass the file's path instead of the name)"
    )


def weights_path(
    name: str,
    *,
    download: bool | None = None,
    progress: bool = True,
    opener: Callable = urllib.request.urlopen,
) -> Path:
    """Local path of named weights, downloading them into the cache when missing.

    download: None follows the environment (`MASKRCNN_OFFLINE=1` forbids it); False never
    touches the network. A cached file whose hash does not match is reported, not used.
    opener: `urllib.request.urlopen`-like callable (tests pass a fake one).
    Raises WeightsUnavailableError (offline / download failed) or ValueError (bad hash).
    """
    entry = _lookup(name)
    target = cache_dir() / entry.kind / entry.filename
    candidates = [target] + ([_torch_hub_checkpoints() / entry.filename] if entry.kind == "torchvision" else [])
    for candidate in candidates:
        if candidate.is_file() and entry.sha256_prefix is None:
            return candidate
        if candidate.is_file():
            # Checked on every load: a file put there by hand is exactly what a user may have
            # got wrong, and hashing costs well under a second next to reading 170 MB of weights.
            digest = file_sha256(candidate)
            if not digest.startswith(entry.sha256_prefix):
                raise ValueError(
                    f"{candidate}: SHA-256 {digest[:16]}... does not start with {entry.sha256_prefix}, "
                    f"so it is not {name} (corrupt or a different file); delete it and fetch {entry.url} again"
                )
            return candidate
    if download is None:
        download = os.environ.get("MASKRCNN_OFFLINE", "").lower() not in ("1", "true", "yes")
    if not download:
        raise WeightsUnavailableError(_offline_message(name, entry, target, "not in the cache and downloads are off"))
    try:
        download_file(entry.url, target, sha256_prefix=entry.sha256_prefix, progress=progress, opener=opener)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsUnavailableError(_offline_message(name, entry, target, f"download failed ({reason})")) from e
    return target


def download_file(
    url: str,
    target: str | os.PathLike,
    *,
    sha256_prefix: str | None = None,
    progress: bool = True,
    opener: Callable = urllib.request.urlopen,
    timeout: float = 60.0,
) -> Path:
    """Stream `url` to a temporary file beside `target`, check its SHA-256 prefix, then rename.

    On a hash mismatch the temporary file is deleted and ValueError names both hashes; an
    existing `target` is never touched until the new file is complete and verified.
    """
    target = Path(target)
    digest = hashlib.sha256()
    # atomic_open renames the file into place only if this block ends without an exception,
    # so raising on a bad hash is all it takes to save nothing.
    with atomic_open(target, "wb") as out:
        with opener(url, timeout=timeout) as response:
            total = _content_length(response)
            bar = _progress_bar(total, target.name) if progress else None
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        hexdigest = digest.hexdigest()
        if sha256_prefix and not hexdigest.startswith(sha256_prefix):
            raise ValueError(
                f"downloaded {url} but its SHA-256 {hexdigest[:16]}... does not start with "
                f"{sha256_prefix}: the download is corrupt or the file changed; nothing was saved"
            )
    return target


def _content_length(response) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    return int(value) if value and value.isdigit() else None


def _progress_bar(total: int | None, name: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {name}",
                file=sys.stderr, disable=None)  # disable=None: no bar when stderr is not a terminal

