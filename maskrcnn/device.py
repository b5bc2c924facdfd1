"""The one device rule (train, eval, predict, load_model) and the inference precision.

    >>> resolve_device("auto")      # doctest: +SKIP  (CUDA when present, else MPS, else the CPU)
    device(type='cpu')
    >>> resolve_device("cuda")      # doctest: +SKIP  (on a CPU build of PyTorch)
    DeviceError: device 'cuda': this PyTorch build has no CUDA support (torch 2.13.0+cpu) ...

A device that is not there is refused here, with a message saying why and what to use instead,
before any model is built: torch's own errors are a list of every device type it knows, or an
AssertionError from deep inside a CPU build.

Precision: "fp32" (default), "bf16" (bfloat16 autocast: the CPU, where AVX512-BF16 / AMX make
it about twice as fast, or a CUDA GPU that supports it) or "fp16" (float16 autocast, CUDA only).
Under either, convolutions and matrix products run in reduced precision while box decoding, NMS,
RoIAlign coordinates and the mask paste stay in float32 (`MaskRCNN.precision`).
"""
from __future__ import annotations

import torch

__all__ = ["DEVICE_HELP", "PRECISIONS", "DeviceError", "check_precision", "resolve_device"]

DEVICE_HELP = "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps"
# Inference precisions (MaskRCNN.precision); "fp16" needs CUDA.
PRECISIONS = ("fp32", "bf16", "fp16")


class DeviceError(ValueError):
    """A device or precision that cannot be used here; the message says what to use."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto", *, local_rank: int | None = None) -> torch.device:
    """A usable torch.device for `name` (see DEVICE_HELP), or DeviceError.

    local_rank: the process's GPU under torchrun; "auto" and a bare "cuda" then mean cuda:local_rank.
    """
    if isinstance(name, torch.device):
        device = name
        label = str(name)
    else:
        label = str(name).strip().lower()
        if label == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", local_rank or 0)
            return torch.device("mps") if _mps_available() else torch.device("cpu")
        try:
            device = torch.device(label)
        except (RuntimeError, ValueError):
            raise DeviceError(f"unknown device {name!r}: use {DEVICE_HELP}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                reason = (f"this PyTorch build has no CUDA support (torch {torch.__version__}); install a "
                          "CUDA build of PyTorch, or use cpu")
            else:
                reason = "no CUDA GPU is visible (no GPU, its driver is not loaded, or CUDA_VISIBLE_DEVICES hides it); use cpu"
            raise DeviceError(f"device {label!r}: {reason}")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
        count = torch.cuda.device_count()
        if device.index >= count:
            raise DeviceError(f"device {label!r}: there {'is' if count == 1 else 'are'} only {count} CUDA "
                              f"device{'' if count == 1 else 's'} (cuda:0..cuda:{count - 1})")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device {label!r}: Apple's MPS is not available here (it needs macOS on Apple "
                              "silicon and a PyTorch build with MPS); use cpu")
        return device
    raise DeviceError(f"device {label!r} is not supported: use {DEVICE_HELP}")


def check_precision(precision: str, device: torch.device) -> str:
    """`precision` if it can run on `device`, else DeviceError."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError(f"precision 'fp16' needs a CUDA device, and this model is on {device}; "
                          "use 'bf16' on the CPU, or 'fp32'")
    if precision == "bf16" and device.type == "mps":
        raise DeviceError("precision 'bf16' is for the CPU and CUDA; use 'fp32' on mps")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"precision 'bf16': {torch.cuda.get_device_name(device)} has no bfloat16 support; use 'fp16'")
    return precision
