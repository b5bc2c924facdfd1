"""Command line: `maskrcnn <command> ...`. Each command lives in its own module and is imported
only when used, so `maskrcnn predict` does not pay for training code."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("maskrcnn.engine.demo", "main", "generate shapes data, train a small model, evaluate and draw"),
    "train": ("maskrcnn.engine.train", "main", "train from a YAML config (torchrun for several processes)"),
    "eval": ("maskrcnn.evaluation.evaluate", "main", "COCO bbox and segm AP of a model on a dataset"),
    "predict": ("maskrcnn.inference.predict", "main", "run a model on images; write JSON, overlays, masks"),
    "export": ("maskrcnn.export.cli", "main", "write a model as one ONNX graph (ONNX Runtime runs it)"),
    "inspect": ("maskrcnn.inference.inspect", "main", "draw anchors, proposals, sampled RoIs and mask targets"),
    "serve": ("maskrcnn.serve.cli", "main", "an HTTP service and web page for a model (extra: serve)"),
    "convert": ("maskrcnn.data.convert", "convert_main", "convert LabelMe / mask PNGs / RLE CSV to COCO JSON"),
}


def usage() -> str:
    lines = ["usage: maskrcnn <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`maskrcnn <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"maskrcnn: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    result = getattr(importlib.import_module(module), func)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
