"""Command-line conventions: --version, a closed pipe, honest --help defaults, plain progress
lines when the output is not a terminal."""
import argparse
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import maskrcnn
from maskrcnn import cli
from maskrcnn.io.progress import LineProgress, format_duration, progress_bar

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"maskrcnn {maskrcnn.__version__} (torch ")


def test_closed_pipe_is_quiet():
    # The reader closes the pipe before anything is written, as `| head` does once it has its
    # lines: the write fails with EPIPE, which must end the command without a traceback.
    proc = subprocess.Popen([sys.executable, "-m", "maskrcnn", "train", "--config", "shapes_cpu.yaml",
                             "--print-config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == cli.EXIT_BROKEN_PIPE, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


@pytest.mark.parametrize("argv", [[c, "--help"] for c in cli.COMMANDS]
                         + [["convert", f, "--help"] for f in ("labelme", "masks", "rle-csv")])
def test_help_shows_no_empty_or_doubled_defaults(argv, capsys):
    module, func, _ = cli.COMMANDS[argv[0]]
    with pytest.raises(SystemExit) as stop:
        getattr(importlib.import_module(module), func)(argv[1:])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines; compare as one line
    assert "(default: None)" not in text and "(default: False)" not in text
    # a help text that states its default must not get argparse's second "(default: ...)"
    for option in text.split(" -")[1:]:
        assert option.lower().count("default:") <= 1, f"doubled default in: -{option}"


def test_help_formatter_rules():
    p = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
    p.add_argument("--req", required=True, help="must be given")
    p.add_argument("--opt", help="optional, no default")
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--num", type=int, default=3, help="a number")
    p.add_argument("--said", default="x", help="states it (default: x)")
    text = " ".join(p.format_help().split())
    assert "must be given (default" not in text and "no default (default" not in text
    assert "a flag (default" not in text
    assert "a number (default: 3)" in text
    assert text.count("(default: x)") == 1


def test_print_config_is_the_resolved_config(capsys):
    from maskrcnn.engine.config import load_config
    from maskrcnn.engine.train import main

    # flags may come between and after the overrides, as users write them
    assert main(["--config", "shapes_cpu.yaml", "solver.max_iter=7", "--print-config",
                 "data.train_annotations=a.json", "data.train_images=img"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["solver"]["max_iter"] == 7 and printed["data"]["train_images"] == "img"
    # it is a config file in its own right, and reading it back gives the same config
    expected = load_config("shapes_cpu.yaml", ["solver.max_iter=7", "data.train_annotations=a.json",
                                               "data.train_images=img"])
    from maskrcnn.engine.config import build_config

    assert build_config(printed).to_dict() == expected.to_dict()


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_line_progress_prints_plain_periodic_lines():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(100, "train", file=out, interval=10.0, clock=clock)
    for _ in range(100):
        clock.t += 1.0  # one iteration per second
        bar.update(1)
        bar.set_postfix_str("loss 0.5")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10  # every 10 s, the last one at 100/100 (close adds none then)
    assert lines[0] == "train: 10/100 (10%), 1.00 it/s, elapsed 10s, eta 1m30s, loss 0.5"
    assert lines[-1].startswith("train: 100/100 (100%), 1.00 it/s, elapsed 1m40s, loss 0.5")


def test_line_progress_final_line_and_resume_offset():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(50, "train", initial=40, file=out, interval=1000.0, clock=clock)
    clock.t = 4.0
    bar.update(2)
    bar.close()  # nothing printed yet: close writes where it ended
    assert out.getvalue() == "train: 42/50 (84%), 0.50 it/s, elapsed 4s, eta 16s\n"


def test_progress_bar_picks_lines_off_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_bar(10, "x", file=io.StringIO()), LineProgress)
    assert not isinstance(progress_bar(10, "x", file=Tty(), disable=True), LineProgress)  # tqdm
    silent = progress_bar(10, "x", enabled=False, file=io.StringIO())
    silent.update(3)
    silent.close()


def test_format_duration():
    assert [format_duration(s) for s in (0, 12.4, 190, 7300)] == ["0s", "12s", "3m10s", "2h01m"]
