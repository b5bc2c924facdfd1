"""Command line: `maskrcnn <command> ...`. Each command lives in its own module and is imported
only when used, so `maskrcnn predict` does not pay for training code."""
from __future__ import annotations

import argparse
import importlib
import os
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
    "check-data": ("maskrcnn.data.check", "main", "a COCO dataset's statistics and problems (and a picture)"),
}

# The exit status of a process killed by SIGPIPE (128 + 13), what `yes | head` reports for `yes`.
EXIT_BROKEN_PIPE = 141


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" only where it tells something: not on required options or
    flags (None / False), and not when the help text already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text.lower() or "%(default)" in text):
            return text
        return super()._get_help_string(action)


def version() -> str:
    import platform

    from . import __version__

    try:  # torch is imported only for --version, not for --help
        import torch
        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = "not installed"
    return f"maskrcnn {__version__} (torch {torch_version}, Python {platform.python_version()})"


def usage() -> str:
    lines = ["usage: maskrcnn <command> [options]", "       maskrcnn --version", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name:<{width}} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`maskrcnn <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        code = _dispatch(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`maskrcnn ... | head`): stop quietly, as Unix tools do. stdout is
        # pointed at /dev/null so the interpreter's final flush does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(version())
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
