"""Frames in and out: videos through PyAV (the optional [video] extra), animated GIF / WebP /
PNG through Pillow.

    reader = open_frames("clip.mp4")        # or "anim.gif"; None for a still image
    reader.count, reader.fps                # frames (counted from the packets, no decoding)
    frame = reader.frame(0)                 # uint8 (H, W, 3) RGB; read forward cheaply
    write_video("out.mp4", frames, fps=reader.fps)   # atomically; .gif/.webp through Pillow

Frames are read in order by one open decoder kept between calls, so reading a whole clip
decodes it once; asking for an earlier frame reopens the file. Every frame of an animated
image is a frame here (Pillow's `Image.open` alone gives the first one only).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_write
from .images import ImageLoadError

__all__ = ["ANIMATED_EXTENSIONS", "VIDEO_EXTENSIONS", "FrameReader", "VideoUnavailable", "is_video_file",
           "open_frames", "write_video"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".ts", ".3gp"})
# image formats that may hold several frames; a file with one frame stays a plain image
ANIMATED_EXTENSIONS = frozenset({".gif", ".webp", ".png", ".apng"})
INSTALL_HINT = 'pip install "maskrcnn[video]" (or: pip install av)'


class VideoUnavailable(ImportError):
    """PyAV is not installed; the message names the file and how to get PyAV."""


def _av(name: str):
    try:
        import av
    except ImportError:
        raise VideoUnavailable(f"{name}: reading and writing video needs PyAV, which is not installed "
                               f"({INSTALL_HINT})") from None
    return av


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class FrameReader:
    """The frames of one video or animated image: `count`, `fps`, `frame(i)`."""

    def __init__(self, path: Path, kind: str, count: int, fps: float, durations: list[int] | None = None):
        self.path, self.kind, self.count, self.fps = path, kind, count, fps
        self.durations = durations  # per frame in ms, for animated images
        self._handle = None
        self._frames = None  # the decoder's frame iterator (video)
        self._next = 0  # index of the frame the next read returns

    def __repr__(self) -> str:
        return f"FrameReader({str(self.path)!r}, {self.kind}, {self.count} frames, {self.fps:.3g} fps)"

    def frame(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB frame `index`; ImageLoadError naming the file and frame when it
        cannot be decoded."""
        name = f"{self.path} frame {index}"
        if not 0 <= index < self.count:
            raise ImageLoadError(name, f"no such frame (it has {self.count})")
        try:
            if self.kind == "video":
                return self._video_frame(index, name)
            return self._image_frame(index)
        except ImageLoadError:
            raise
        except Exception as e:  # a decoder error in the middle of the file
            self.close()
            raise ImageLoadError(name, f"cannot decode frame ({type(e).__name__}: {e})") from None

    def _video_frame(self, index: int, name: str) -> np.ndarray:
        if self._handle is None or index < self._next:
            self.close()
            av = _av(str(self.path))
            self._handle = av.open(str(self.path))
            stream = self._handle.streams.video[0]
            stream.thread_type = "AUTO"
            self._frames = self._handle.decode(stream)
            self._next = 0
        for frame in self._frames:
            self._next += 1
            if self._next - 1 == index:
                return frame.to_ndarray(format="rgb24")
        self.count = self._next  # the packets promised more frames than the decoder gave
        raise ImageLoadError(name, f"the video ends after {self._next} frames")

    def _image_frame(self, index: int) -> np.ndarray:
        if self._handle is None:
            self._handle = Image.open(self.path)
        self._handle.seek(index)
        return np.asarray(self._handle.convert("RGB"))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle, self._frames, self._next = None, None, 0


def open_frames(path: str | os.PathLike) -> FrameReader | None:
    """A FrameReader for a video file (by extension) or an image file with more than one
    frame; None for anything else (a still image). Raises VideoUnavailable for a video
    without PyAV, ImageLoadError naming the file when it is not a readable video."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return _open_video(path)
    if suffix in ANIMATED_EXTENSIONS:
        try:
            with Image.open(path) as image:
                count = int(getattr(image, "n_frames", 1))
                if count <= 1:
                    return None
                durations = []
                for i in range(count):
                    image.seek(i)
                    image.load()  # WebP sets a frame's duration only when the frame is loaded
                    durations.append(int(image.info.get("duration", 100)) or 100)
        except Exception:
            return None  # load_image reports what is wrong with it
        fps = 1000.0 * count / sum(durations)
        return FrameReader(path, "animation", count, fps, durations)
    return None


def _open_video(path: Path) -> FrameReader:
    av = _av(str(path))
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImageLoadError(str(path), "the file has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or 25
            # one packet per frame: counting them reads the file without decoding a pixel
            count = sum(1 for packet in container.demux(stream) if packet.size)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(str(path), "video file not found (no such file)") from None
    except Exception as e:  # av.error.InvalidDataError and its kin
        raise ImageLoadError(str(path), f"cannot read video ({type(e).__name__}: {e})") from None
    if count == 0:
        raise ImageLoadError(str(path), "the video has no frames")
    return FrameReader(path, "video", count, float(rate))


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray | Image.Image], *, fps: float = 25.0,
                durations: list[int] | None = None) -> Path:
    """Write RGB frames (uint8 (H, W, 3) arrays or PIL images, all one size) atomically:
    .gif / .webp (lossless) / .png as an animated image (Pillow; `durations` in ms per frame,
    default from fps), anything else as a video through PyAV (H.264 in .mp4/.mkv/.mov where the
    build has an encoder, else MPEG-4 part 2). Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ANIMATED_EXTENSIONS:
        images = [f if isinstance(f, Image.Image) else Image.fromarray(f) for f in frames]
        if not images:
            raise ValueError(f"{path}: no frames to write")
        duration = durations or [round(1000 / fps)] * len(images)
        fmt = "PNG" if suffix in (".png", ".apng") else suffix.lstrip(".").upper()
        extra = {"lossless": True} if fmt == "WEBP" else {}  # thin outlines and captions stay crisp
        return atomic_write(path, lambda tmp: images[0].save(
            tmp, format=fmt, save_all=True, append_images=images[1:], duration=duration, loop=0, **extra))
    av = _av(str(path))
    return atomic_write(path, lambda tmp: _encode(av, tmp, frames, fps))


def _encode(av, tmp: Path, frames: Iterable, fps: float) -> None:
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), mode="w") as container:
        stream = None
        for frame in frames:
            rgb = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)
            if stream is None:
                codec = "libx264" if "libx264" in av.codecs_available and tmp.suffix.lower() in (".mp4", ".mkv", ".mov") \
                    else "mpeg4"
                # near-lossless: an overlay's thin outlines and captions survive the encoding
                options = {"crf": "18"} if codec == "libx264" else {"qscale": "2"}
                stream = container.add_stream(codec, rate=rate, options=options)
                # yuv420p halves the chroma resolution: the encoders need even sizes
                stream.height, stream.width = rgb.shape[0] - rgb.shape[0] % 2, rgb.shape[1] - rgb.shape[1] % 2
                stream.pix_fmt = "yuv420p"
            rgb = np.ascontiguousarray(rgb[:stream.height, :stream.width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        if stream is None:
            raise ValueError(f"{tmp}: no frames to write")
        container.mux(stream.encode())  # flush the encoder
