"""`maskrcnn serve --weights W [--host 127.0.0.1] [--port 8000]`: the model over HTTP.

    maskrcnn serve --weights out/model.safetensors --port 8000
    curl -s --data-binary @photo.jpg "http://127.0.0.1:8000/v1/predict?score_threshold=0.6"
    curl -s -F image=@photo.jpg -F format=png http://127.0.0.1:8000/v1/predict -o overlay.png

Weights: anything `maskrcnn.load_model` accepts (native, torchvision file or name, Detectron2,
ONNX). Needs the optional extra: pip install "maskrcnn[serve]".
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

from ..device import DEVICE_HELP, PRECISIONS
from ..io import DEFAULT_MAX_PIXELS

REQUIRED = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}


def missing_packages() -> list[str]:
    return [package for module, package in REQUIRED.items() if importlib.util.find_spec(module) is None]


def build_parser() -> argparse.ArgumentParser:
    from .app import ServeSettings  # noqa: F401 - only for the defaults below; needs fastapi

    d = ServeSettings()
    p = argparse.ArgumentParser(prog="maskrcnn serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-w", "--weights", required=True, help="checkpoint file, torchvision:NAME or model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16: bfloat16 autocast (CPU or CUDA); fp16: float16 autocast, CUDA only")
    p.add_argument("--variant", choices=("v1", "v2", "faster", "faster_v2"),
                   help="layout of a torchvision checkpoint (default: inferred; faster*: Faster R-CNN, no masks)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--score-threshold", type=float, default=d.score_threshold, help="default of the request option")
    p.add_argument("--mask-threshold", type=float, default=d.mask_threshold, help="default of the request option")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20,
                   help="larger uploads get 413 (MiB)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"larger images get 413, read from the header (0: no limit but Pillow's; "
                        f"`maskrcnn predict` allows {DEFAULT_MAX_PIXELS})")
    p.add_argument("--queue-size", type=int, default=d.queue_size,
                   help="requests in progress at once; more get 503")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request; longer get 504")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="requests per model call (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long a batch waits for more requests")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def main(argv: list[str] | None = None) -> int:
    say = lambda msg: print(f"maskrcnn serve: {msg}", file=sys.stderr)  # noqa: E731
    missing = missing_packages()
    if missing:
        say(f"needs {', '.join(missing)}, which the optional extra installs: pip install \"maskrcnn[serve]\" "
            "(from a checkout: pip install -e \".[serve]\")")
        return 2
    args = build_parser().parse_args(argv)
    import torch
    import uvicorn

    from ..inference.api import load_model
    from .app import ServeSettings, create_app

    try:
        settings = ServeSettings(
            score_threshold=args.score_threshold, mask_threshold=args.mask_threshold,
            max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels or None,
            queue_size=args.queue_size, timeout_s=args.timeout,
            max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        )
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {args.port}")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
    except ValueError as e:
        say(str(e))
        return 2
    try:
        predictor = load_model(args.weights, device=args.device, precision=args.precision, variant=args.variant,
                               max_pixels=settings.max_pixels)
    except Exception as e:  # any load failure is the user's input; show it without a traceback
        say(f"cannot load --weights {args.weights}: {e}")
        return 2
    app = create_app(predictor, settings=settings, model_name=str(args.weights))
    print(f"maskrcnn serve: {predictor!r} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
