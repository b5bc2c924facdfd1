"""Load on the real server: `maskrcnn serve` in a subprocess on a loopback port, 1,000
requests from 8 concurrent clients, no errors, and no memory growth (RSS after the run within
10 % of RSS after warm-up, read from /proc/PID/status); /healthz answers throughout."""
from __future__ import annotations

import json
import threading
import urllib.request

import numpy as np

from inference_helpers import make_image
from serve_helpers import encode, post_many, rss_kib, running_server

from maskrcnn.inference.outputs import rle_to_mask

REQUESTS, CLIENTS, WARMUP = 1000, 8, 100


def test_1000_requests_from_8_clients_no_errors_no_memory_growth(load_weights):
    # four sizes, so batches mix images that pad alike and images that do not
    images = [encode(make_image(i, *size)) for i, size in enumerate([(48, 64), (64, 48), (48, 64), (40, 72)])]
    with running_server(load_weights, "--max-batch-size", "4", "--max-wait-ms", "2") as (url, server):
        warm = post_many(url, [images[i % 4] for i in range(WARMUP)], CLIENTS)
        assert all(status == 200 for status, _, _ in warm)
        rss_warm = rss_kib(server.pid)
        health, done = [], threading.Event()

        def probe():  # /healthz answers all through the load
            while not done.is_set():
                with urllib.request.urlopen(f"{url}/healthz", timeout=30) as answer:
                    health.append(answer.status)
                done.wait(0.5)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            results = post_many(url, [images[i % 4] for i in range(REQUESTS)], CLIENTS)
        finally:
            done.set()
            prober.join()
        rss_after = rss_kib(server.pid)
        assert health and set(health) == {200}
        errors = [(i, status, body[:200]) for i, (status, body, _) in enumerate(results) if status != 200]
        assert not errors, f"{len(errors)} of {REQUESTS} failed, e.g. {errors[:3]}"
        answers = [json.loads(body) for _, body, _ in results]
        # the same image gets the same answer however it was batched: the same detections,
        # numbers to float32 rounding (a batch of 4 and one of 1 run convolutions with other
        # blockings, which moves the last bits: seen as 2 ulp in a score)
        for i, answer in enumerate(answers):
            got, want = answer["detections"], answers[i % 4]["detections"]
            assert [(d["label"], d["class_name"]) for d in got] == [(d["label"], d["class_name"]) for d in want]
            assert np.allclose([d["box"] for d in got], [d["box"] for d in want], rtol=0, atol=1e-3)
            assert np.allclose([d["score"] for d in got], [d["score"] for d in want], rtol=0, atol=1e-5)
            for a, b in zip(got, want):
                assert (rle_to_mask(a["mask"]) != rle_to_mask(b["mask"])).mean() <= 0.01
        batch_sizes = [a["batch_size"] for a in answers]
        print(f"\n{REQUESTS} requests, {CLIENTS} clients: RSS {rss_warm} KiB after warm-up, "
              f"{rss_after} KiB after ({100 * (rss_after / rss_warm - 1):+.1f} %); "
              f"mean batch {sum(batch_sizes) / len(batch_sizes):.2f}, "
              f"p50 {sorted(t for _, _, t in results)[REQUESTS // 2] * 1000:.1f} ms")
        assert rss_after <= 1.10 * rss_warm, f"RSS grew from {rss_warm} KiB to {rss_after} KiB"
        assert server.poll() is None  # still running
