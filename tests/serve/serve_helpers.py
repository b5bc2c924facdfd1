"""Models, images and a real server process for the serve tests.

Two tiny models: the inference tests' one (`make_tiny_model`, 128 px, spread output layers so
it returns several detections with masks) for the API and browser tests, and a narrower one at
64 px (about 8 ms a forward on one core) for the 1,000-request load test.
"""
from __future__ import annotations

import contextlib
import http.client
import io
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskrcnn import build_preset
from maskrcnn.checkpoint import save_model
from testing_utils import spread_output_layers

ROOT = Path(__file__).resolve().parents[2]
LOAD_OPTIONS = dict(
    num_classes=4, class_names=["circle", "square", "triangle"], min_size=64, max_size=64,
    base_width=8, fpn_channels=16, representation_size=32, mask_head_channels=16,
    rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_detections_per_img=10,
)


def make_load_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_preset("maskrcnn_resnet18_small", **LOAD_OPTIONS)
    spread_output_layers(model)
    return model.eval()


def encode(array: np.ndarray, format: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS, in KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def running_server(weights: Path, *args: str, threads: int = 1, ready_timeout: float = 60.0):
    """`python -m maskrcnn serve --weights W` on a free loopback port, this checkout's code;
    yields (base URL, Popen) once /readyz answers 200. Its log goes to stderr of the test."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "maskrcnn", "serve", "--weights", str(weights), "--port", str(port),
               "--threads", str(threads), "--log-level", "warning", *args]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:  # refused while starting; HTTPError 503 while warming up
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout} s")
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_client(predictor, **settings):
    """FastAPI's test client on an app of `predictor` (enter it to run the lifespan)."""
    from fastapi.testclient import TestClient

    from maskrcnn.serve import ServeSettings, create_app

    return TestClient(create_app(predictor, settings=ServeSettings(**settings), model_name="tiny"))


def post_many(url: str, bodies: list[bytes], clients: int, path: str = "/v1/predict",
              timeout: float = 60.0) -> list[tuple[int, bytes, float]]:
    """POST every body, from `clients` threads each on its own keep-alive connection;
    returns (status, response body, seconds) per request, in order."""
    host, port = url.removeprefix("http://").split(":")
    results: list = [None] * len(bodies)
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()

    def client():
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    connection.request("POST", path, body=bodies[i], headers={"Content-Type": "image/png"})
                    answer = connection.getresponse()
                    results[i] = (answer.status, answer.read(), time.perf_counter() - start)
                except (OSError, http.client.HTTPException) as e:
                    results[i] = (-1, repr(e).encode(), time.perf_counter() - start)
                    connection.close()
                    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def saved_model(model, folder: Path) -> Path:
    return save_model(model, folder / "model.safetensors")
