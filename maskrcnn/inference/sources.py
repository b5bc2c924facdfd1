"""What `predict` takes, in one place for the Python API and the CLI: files, folders, glob
patterns, videos and animated images (one input per frame), numpy arrays, PIL images and
tensors, alone or in a list.

    for item in iter_inputs(["photos/", "clip.mp4", "*.png", array]):
        item.label, item.path, item.frame   # "clip.mp4#12", Path("clip.mp4"), 12
        image = item.load(max_pixels)       # float32 (3, H, W), as load_image gives it

Paths are expanded by `maskrcnn.io.expand_sources` (a folder gives its image and video files,
sorted; a glob gives its matches; a named file is always tried), lazily, source by source, so
a stream starts before a long list of folders is walked. A video (by extension) becomes its
frames, in order, read by one decoder (`maskrcnn.io.video`); so does a GIF / WebP / PNG with
more than one frame.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from ..io import IMAGE_EXTENSIONS, ImageLoadError, expand_sources, load_image
from ..io.video import VIDEO_EXTENSIONS, FrameReader, open_frames

__all__ = ["InputItem", "expand_inputs", "iter_inputs"]

# what a folder or a glob picks up: images and videos
INPUT_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


@dataclass
class InputItem:
    """One image to predict on. label: how results and messages name it (the path, with
    "#N" for frame N of a video or animation, or "<numpy array>" etc.); path: the file, None
    for an in-memory image; frame: the frame index within the file, or None."""

    label: str
    path: Path | None = None
    frame: int | None = None
    image: Any = None  # an in-memory image
    reader: FrameReader | None = None  # the file's frames
    error: ImageLoadError | None = None  # why the file cannot be read at all (a broken video)

    def load(self, max_pixels: int | None) -> Tensor:
        if self.error is not None:
            raise self.error
        if self.reader is not None:
            return load_image(self.reader.frame(self.frame), max_pixels=max_pixels, name=self.label)
        if self.path is not None:
            return load_image(self.path, max_pixels=max_pixels)
        return load_image(self.image, max_pixels=max_pixels)


def iter_inputs(images: Any) -> Iterator[InputItem]:
    """One InputItem per image: see the module docstring. Raises FileNotFoundError naming a
    path, folder or pattern that gives no file; TypeError for an unsupported type;
    `maskrcnn.io.video.VideoUnavailable` for a video without PyAV."""
    for source in _as_list(images):
        if isinstance(source, (str, os.PathLike)):
            for path in expand_sources([source], extensions=INPUT_EXTENSIONS):
                yield from _file_items(path)
        else:
            yield InputItem(label=_describe(source), image=source)


def expand_inputs(images: Any) -> list[InputItem]:
    """`iter_inputs` as a list (frames are still read only when loaded)."""
    return list(iter_inputs(images))


def _file_items(path: Path) -> Iterator[InputItem]:
    try:
        reader = open_frames(path)
    except ImageLoadError as e:  # a broken video: reported when it is loaded, like a broken image
        yield InputItem(label=str(path), path=path, error=e)
        return
    if reader is None:
        yield InputItem(label=str(path), path=path)
        return
    for index in range(reader.count):
        yield InputItem(label=f"{path}#{index}", path=path, frame=index, reader=reader)


def _describe(image: Any) -> str:
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or "<PIL image>"
    return "<numpy array>" if isinstance(image, np.ndarray) else "<tensor>"


def _as_list(images: Any) -> list:
    """One image or many -> a list of single sources."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (Tensor, np.ndarray)):
        # (N, C, H, W) tensors and (N, H, W, C) arrays are batches; anything else is one image
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        if len(images) == 0:
            raise ValueError("no images given")
        return list(images)
    raise TypeError(f"images must be a path, folder, glob pattern, PIL image, numpy array, tensor or a list "
                    f"of them, got {type(images).__name__}")
