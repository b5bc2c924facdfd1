"""`maskrcnn serve`'s command line: the missing extra, bad flags and bad weights end with a
message and exit 2 before anything listens (serving itself: test_load, test_browser)."""
from __future__ import annotations

import importlib.util

import pytest

from maskrcnn.cli import main


def test_without_the_extra_it_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("fastapi", "multipart") else real(name, *a))
    assert main(["serve", "--weights", "x"]) == 2
    err = capsys.readouterr().err
    assert "needs fastapi, python-multipart" in err and 'pip install "maskrcnn[serve]"' in err


@pytest.mark.parametrize("flags, message", [
    (["--max-batch-size", "0"], "max_batch_size must be at least 1"),
    (["--score-threshold", "1.5"], "score_threshold must be in [0, 1]"),
    (["--queue-size", "0"], "queue_size must be at least 1"),
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_bad_flags_exit_2_with_a_message(tmp_path, capsys, flags, message):
    assert main(["serve", "--weights", str(tmp_path / "none.safetensors"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_missing_weights_exit_2_naming_them(tmp_path, capsys):
    missing = tmp_path / "nothing.safetensors"
    assert main(["serve", "--weights", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"cannot load --weights {missing}" in err and "does not exist" in err


def test_serve_is_listed_in_the_usage(capsys):
    assert main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
