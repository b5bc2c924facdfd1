"""Files out, never half-written: every output goes through a temporary file in the same folder
and `os.replace` (`atomic_open`, `atomic_write`, `write_json_atomic`); `check_writable` probes
an output before hours of work go into it, and `describe_os_error` says what a failed write
means (disk full, permission denied) with the path. And files in: `expand_sources` turns
command-line sources (files, folders, globs) into a list of images, `read_text` reads a text
file of any common encoding or refuses it in words, and `inside_folder` keeps a path named
by a data file from leaving the folder it belongs to.
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .images import IMAGE_EXTENSIONS, DataError


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


_GLOB_MAGIC = re.compile(r"[*?[]")


def expand_sources(sources: Iterable[str | os.PathLike], *,
                   extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files, folders and glob patterns -> the image files they name, in order, without duplicates.

    - an existing file is kept whatever its extension (a bad one is reported by load_image);
    - a folder gives its image files (by extension, not recursive, hidden files skipped,
      sorted by name);
    - a glob pattern (`*`, `?`, `[...]`; `**` recurses) gives its matching image files, sorted.
    `~` is expanded. extensions: what counts as an image file in folders and globs
    (lower-case, with the dot). Raises FileNotFoundError naming every source that gave no
    file at all.
    """
    extensions = frozenset(extensions)
    wanted = lambda p: Path(p).suffix.lower() in extensions  # noqa: E731
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
                if p.is_file() and wanted(p) and not p.name.startswith(".")
            )
            if not matches:
                problems.append(f"{text!r}: folder has no image files ({', '.join(sorted(extensions))})")
        elif path.is_file():
            matches = [path]
        elif _GLOB_MAGIC.search(text):
            import glob  # only needed here

            matches = sorted(
                Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p) and wanted(p)
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
    delete it when the block raises (an existing file at `path` is then left untouched).

    A full disk, a missing permission or a read-only file system, whether it surfaces as an
    OSError or inside a library's own error (safetensors' SafetensorError), is raised as an
    OSError of that errno whose message names `path` ("PATH: cannot write: disk full (...)")."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
        yield tmp
        _commit(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        number = os_error_errno(e) if isinstance(e, Exception) else None
        if number in _ERRNO_WORDS:
            raise OSError(number, describe_os_error(e, path)) from e
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


# ---------------------------------------------------------------------------------------------
# Errors of writes, said in words


_ERRNO_WORDS = {
    errno.ENOSPC: "disk full (no space left on the device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_errno(error: BaseException) -> int | None:
    """The errno behind an error, also when a library wrapped the OSError (torch.save raises
    RuntimeError "[enforce fail at inline_container.cc] ... No space left on device",
    safetensors a SafetensorError): from the exception, its causes, or its message."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return current.errno
        current = current.__cause__ or current.__context__
    text = str(error)
    for number in _ERRNO_WORDS:
        if os.strerror(number) in text:
            return number
    return None


def describe_os_error(error: BaseException, path: str | os.PathLike) -> str:
    """"PATH: disk full (no space left on the device)" and the like, for an error raised while
    writing `path`; unknown errors keep their own text."""
    number = os_error_errno(error)
    if number in _ERRNO_WORDS:
        return f"{os.fspath(path)}: cannot write: {_ERRNO_WORDS[number]}"
    detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"{os.fspath(path)}: cannot write: {detail or type(error).__name__}"


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Make sure `path` can be written before any work goes into it: creates the folder (or the
    file's parent folders) and creates and deletes a probe file there. An existing file at
    `path` is not touched. Raises OSError whose message (`strerror`) names `path` and says
    what is wrong, as `describe_os_error` does.
    """
    path = Path(path)
    target_dir = path if folder else path.parent
    # the nearest existing folder above: mkdir would only say "File exists" for a file in the way
    existing = next((p for p in (target_dir, *target_dir.parents) if p.exists()), None)
    if not folder and path.is_dir():
        raise OSError(errno.EISDIR, f"{os.fspath(path)}: cannot write: is a folder, not a file")
    if existing is not None and not existing.is_dir():
        what = "" if existing == path else f"{os.fspath(existing)} "
        raise OSError(errno.ENOTDIR, f"{os.fspath(path)}: cannot write: {what}is a file, not a folder")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=target_dir, prefix=".write_probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
        if not folder and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied", str(path))
    except OSError as e:
        raise OSError(e.errno, describe_os_error(e, path)) from None
    return path


# ---------------------------------------------------------------------------------------------
# Text and paths in


_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_text(path: str | os.PathLike, *, encoding: str | None = None, what: str = "text file") -> str:
    """A text file's contents, decoded.

    encoding None: a byte-order mark decides (UTF-8, UTF-16 or UTF-32, as editors on Windows
    write them), otherwise the file must be UTF-8. Anything else raises DataError naming the
    file, the first undecodable byte and its offset, and how to fix it (re-save as UTF-8, or
    name the encoding). Unreadable files raise DataError too, never a bare OSError.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if encoding is None:
        encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except LookupError:
        raise DataError(f"{path}: unknown text encoding {encoding!r}") from None
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 1]
        raise DataError(
            f"{path}: {what} is not valid {encoding} text (byte 0x{bad.hex()} at offset {e.start}); "
            "re-save it as UTF-8, or name its encoding (e.g. --encoding cp1252)"
        ) from None


def inside_folder(name: str, folder: str | os.PathLike, *, allow_outside: bool = False) -> Path:
    """`folder / name` for a file name read from a data file (COCO `file_name`, LabelMe
    `imagePath`, a CSV `ImageId`), refusing names that leave the folder.

    Absolute names and names whose `..` parts climb out of `folder` raise DataError, unless
    `allow_outside`: a data file from elsewhere must not make us open (or, through an error
    message, show) files such as /etc/passwd. Backslashes count as separators, since Windows
    tools write them. The check is on the names, not on where symbolic links lead, so a folder
    of links into a shared image store keeps working.
    """
    text = str(name).replace("\\", "/")
    candidate = Path(text)
    if allow_outside:  # ".." taken by name, as for the check below (the OS would need "sub/" to exist)
        return Path(os.path.normpath(text if candidate.is_absolute() else os.path.join(folder, text)))
    if candidate.is_absolute() or re.match(r"^[A-Za-z]:", text):
        raise DataError(f"{name!r} is an absolute path; file names must be relative to {os.fspath(folder)}")
    normal = os.path.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise DataError(f"{name!r} points outside {os.fspath(folder)} (through '..')")
    return Path(folder) / normal
