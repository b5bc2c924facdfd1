"""Reading images and writing files, for every part of the package (data, inference,
checkpoints, training): images.py (any image -> the model's input), files.py (atomic writes,
write checks and errors in words, command-line sources, text of any encoding, paths kept
inside their folder), rle.py (Kaggle run-length masks)."""
from .files import (
    atomic_open,
    atomic_write,
    check_writable,
    describe_os_error,
    expand_sources,
    inside_folder,
    is_image_file,
    os_error_errno,
    read_text,
    write_json_atomic,
)
from .images import (
    DEFAULT_MAX_PIXELS,
    EXIF_ORIENTATION_TAG,
    IMAGE_EXTENSIONS,
    DataError,
    ImageLoadError,
    ImageSource,
    exif_transpose,
    image_sizes,
    load_image,
    open_image,
)
from .rle import decode_kaggle_rle, encode_kaggle_rle

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EXIF_ORIENTATION_TAG",
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageLoadError",
    "ImageSource",
    "atomic_open",
    "atomic_write",
    "check_writable",
    "describe_os_error",
    "decode_kaggle_rle",
    "encode_kaggle_rle",
    "exif_transpose",
    "expand_sources",
    "image_sizes",
    "inside_folder",
    "is_image_file",
    "load_image",
    "open_image",
    "os_error_errno",
    "read_text",
    "write_json_atomic",
]
