"""Files out, never half-written: every output goes through a temporary file in the same folder
and `os.replace` (`atomic_open`, `atomic_write`, `write_json_atomic`). And files in:
`expand_sources` turns command-line sources (files, folders, globs) into a list of images.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .images import IMAGE_EXTENSIONS


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


_GLOB_MAGIC = re.compile(r"[*?[]")


def expand_sources(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders and glob patterns -> the image files they name, in order, without duplicates.

    - an existing file is kept whatever its extension (a bad one is reported by load_image);
    - a folder gives its image files (by extension, not recursive, hidden files skipped,
      sorted by name);
    - a glob pattern (`*`, `?`, `[...]`; `**` recurses) gives its matching image files, sorted.
    `~` is expanded. Raises FileNotFoundError naming every source that gave no file at all.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]  # a lone string would otherwise be iterated character by character
    found: dict[Path, None] = {}  # an ordered set
    problems: list[str] = []
    for source in sources:
        text = os.path.expanduser(os.fspath(source))
        path = Path(text)
        if path.is_dir():
            matches = sorted(
                p for p in path.iterdir()
                if p.is_file() and is_image_file(p) and not p.name.startswith(".")
            )
            if not matches:
                problems.append(f"{text!r}: folder has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif path.is_file():
            matches = [path]
        elif _GLOB_MAGIC.search(text):
            import glob  # only needed here

            matches = sorted(
                Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p) and is_image_file(p)
            )
            if not matches:
                problems.append(f"{text!r}: pattern matches no image file")
        else:
            matches = []
            problems.append(f"{text!r}: no such file or folder")
        for match in matches:
            found.setdefault(match)
    if problems:
        raise FileNotFoundError("no images found for " + "; ".join(problems))
    return list(found)


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _read_umask() -> int:
    # mkstemp creates files 0600; outputs should get the usual permissions instead. umask can
    # only be read by setting it, so do it once at import rather than on every write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _temp_path(path: Path) -> Path:
    # Same folder (so os.replace is an atomic rename, never a cross-device copy), hidden name
    # (so globs over the output folder skip it), the real suffix last (so writers that infer
    # the format from the name, like PIL's save, still do).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    with contextlib.suppress(OSError):  # fsync is best-effort (unsupported on some filesystems)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` when the block ends normally,
    delete it when the block raises (an existing file at `path` is then left untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        _commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` to write a temporary file, then move it to `path` in one step.

    The temporary file lives in the destination folder and ends with the same suffix as
    `path`, so `writer` may be e.g. `lambda p: image.save(p)` or
    `lambda p: torch.save(state, p)`. If `writer` raises, the temporary file is removed and an
    existing file at `path` is left untouched. Missing parent folders are created. Returns
    `path` as a Path.
    """
    with _replacing(path) as tmp:
        writer(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` for writing, made atomic: the file appears under `path` only when the
    `with` block ends without an exception; otherwise nothing is left behind.

        with atomic_open("results.json", "w", encoding="utf-8") as f:
            json.dump(results, f)

    mode: "w", "wt" or "wb". Extra keyword arguments (encoding, newline...) go to `open`.
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_open only writes whole files (mode 'w', 'wt' or 'wb'), got {mode!r}")
    # the file is closed (flushed) before _replacing moves it into place
    with _replacing(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def write_json_atomic(obj: Any, path: str | os.PathLike, **dump_kwargs: Any) -> Path:
    """`json.dump(obj)` to `path` (UTF-8) through `atomic_open`, so a crash or a full disk never
    leaves a truncated file where a good one was. `dump_kwargs` go to `json.dump` (indent,
    default, separators...). Missing parent folders are created. Returns `path` as a Path."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)
    return Path(path)
