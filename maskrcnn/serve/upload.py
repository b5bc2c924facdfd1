"""Uploads in, with every limit checked as early as it can be.

An upload is refused
  - with 413 when its Content-Length is above the byte limit, before a byte of it is read, and
    when the bytes counted while streaming pass the limit (a chunked or lying client): the
    server never holds more than the limit in memory;
  - with 413 when its header says it has more pixels than allowed, before it is decoded
    (`maskrcnn.io.open_image` reads the size from the header; a decompression bomb costs nothing);
  - with 400 when it is empty, not an image, corrupt or truncated, or a malformed multipart
    body; the message says which.
Decoding is `maskrcnn.io`'s, the same code `maskrcnn predict` uses for files.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from torch import Tensor

from ..io import ImageLoadError, ImageTooLargeError, load_image, open_image

# Field names taken as the image in a multipart form, in order of preference.
IMAGE_FIELDS = ("image", "file")


class UploadError(HTTPException):
    """An upload refused with a status code and a message that says what is wrong."""

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code=status_code, detail=message)


@dataclass
class Upload:
    data: bytes
    name: str  # the multipart file name, or "upload" for a raw body
    fields: dict[str, str]  # the multipart form's text fields (options)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be above max_bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise UploadError(400, f"Content-Length {declared[:40]!r} is not a number") from None
        if size > max_bytes:
            raise UploadError(413, f"upload is {size} bytes, above the limit of {max_bytes} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise UploadError(413, f"upload is more than {max_bytes} bytes, the limit")
    except ClientDisconnect:  # nobody is left to read the answer; say why in the log
        raise UploadError(400, f"client disconnected after {len(body)} bytes of the upload") from None
    return bytes(body)


async def parse_upload(request: Request, max_bytes: int) -> Upload:
    """A raw body (any content type but multipart) is the image itself; a multipart form holds
    it in a file field named "image" or "file" (or its only file field), options in text fields."""
    body = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return Upload(body, "upload", {})

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=16).parse()
    except MultiPartException as e:
        raise UploadError(400, f"malformed multipart body: {e.message}") from None
    except Exception as e:  # python-multipart raises its own errors on garbage boundaries
        raise UploadError(400, f"malformed multipart body ({type(e).__name__}: {e})") from None
    files = {key: value for key, value in form.multi_items() if isinstance(value, UploadFile)}
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    chosen = next((files[k] for k in IMAGE_FIELDS if k in files), None)
    if chosen is None and len(files) == 1:
        chosen = next(iter(files.values()))
    if chosen is None:
        found = f"file fields {sorted(files)}" if files else "no file field"
        raise UploadError(400, f"multipart body has {found}; send the image in a file field named 'image'")
    data = await chosen.read()
    await form.close()
    return Upload(data, chosen.filename or "upload", fields)


def decode_image(data: bytes, name: str, max_pixels: int | None) -> Tensor:
    """Upload bytes -> float32 (3, H, W) in [0, 1], EXIF-upright. Raises UploadError: 413 for
    too many pixels (from the header), 400 for anything unreadable."""
    if not data:
        raise UploadError(400, f"{name}: empty upload (0 bytes); send an image file")
    try:
        image = open_image(io.BytesIO(data), max_pixels=max_pixels, name=name)
        return load_image(image, max_pixels=max_pixels, name=name)
    except ImageTooLargeError as e:
        raise UploadError(413, str(e)) from None
    except ImageLoadError as e:
        raise UploadError(400, str(e)) from None
    except MemoryError:
        raise UploadError(413, f"{name}: not enough memory to decode this image") from None
