"""`maskrcnn export --weights W --out model.onnx [--paste]`: write a model as one ONNX graph.

The weights are anything `maskrcnn predict` reads (our model.safetensors, a torchvision .pth,
torchvision:maskrcnn_resnet50_fpn); class names and COCO category ids travel into the graph's
metadata, so `maskrcnn predict --weights model.onnx` writes the same files as the weights would.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli import HelpFormatter

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskrcnn export",
        description="Export a Mask R-CNN to ONNX: normalize, resize, backbone, RPN, RoI heads and masks in one graph.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("-w", "--weights", required=True,
                   help="model.safetensors (with its .json), a torchvision .pth/.safetensors, or "
                        "torchvision:maskrcnn_resnet50_fpn / torchvision:maskrcnn_resnet50_fpn_v2")
    p.add_argument("-o", "--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--paste", action="store_true",
                   help="also output masks pasted at the input size (else 28x28 probabilities, pasted by the runtime)")
    p.add_argument("--variant", choices=("v1", "v2"), help="layout of a torchvision checkpoint (default: inferred)")
    p.add_argument("--score-threshold", type=float,
                   help="the graph's default box score threshold (an input callers may override; "
                        "default: the model's box_score_thresh)")
    p.add_argument("--no-check", action="store_true", help="skip onnx.checker on the written graph")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if args.out.suffix.lower() != ".onnx":
        say(f"maskrcnn export: --out must name a .onnx file, got {args.out}")
        return 2
    try:
        from .onnx import _require_onnx

        _require_onnx()
    except (ImportError, RuntimeError) as e:
        say(f"maskrcnn export: {e}")
        return 2
    from ..inference.api import load_model
    from .onnx import export_onnx

    options = {} if args.score_threshold is None else {"box_score_thresh": args.score_threshold}
    try:
        predictor = load_model(args.weights, device="cpu", variant=args.variant, **options)  # exported on the CPU
    except Exception as e:  # the user's input: show it without a traceback
        say(f"maskrcnn export: cannot load --weights {args.weights}: {e}")
        return 2
    if not hasattr(predictor.model, "backbone"):
        say(f"maskrcnn export: {args.weights} is already an exported graph")
        return 2
    start = time.perf_counter()
    path = export_onnx(predictor.model, args.out, paste=args.paste, class_names=predictor.class_names,
                       category_ids=predictor.category_ids, check=not args.no_check)
    size_mb = path.stat().st_size / 2**20
    say(f"wrote {path} ({size_mb:.1f} MiB, {'pasted masks' if args.paste else '28x28 masks'}) "
        f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
