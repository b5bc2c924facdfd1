"""`maskrcnn serve` throughput: requests/s and p50/p95 latency at 1, 4 and 8 concurrent
clients, with dynamic batching (--max-batch-size 4) and without (--max-batch-size 1).

    python benchmarks/serve.py                       # shapes model and R50
    python benchmarks/serve.py --models shapes --requests 200
    python benchmarks/serve.py --json serve.json

Each configuration is a fresh `python -m maskrcnn serve` on a loopback port (this checkout's
code), warmed up, then hit by N client threads with keep-alive connections, each POSTing PNGs
as raw bodies (format=json, score_threshold 0.5). Batching on and off alternate per client
count, so both see the same machine; on a shared machine read the ratios, not the absolutes.

Models: "shapes" is the architecture of configs/shapes_cpu.yaml (ResNet-18 at 1/4 width, v2
heads, 128 px) with seeded output layers spread so it returns detections with masks like a
trained one, on 128x128 images of the synthetic shapes data; "r50" is Mask R-CNN R50-FPN v1
on the torchvision parity fixture's recipe weights (as benchmarks/inference_cpu.py), on
coffee.png (resized by the model to 800 x 1200).

Measured 2026-12-02 on the 2-core CI machine class while ~5 other sessions shared it (load
average 13-18, so absolutes are several times slower than a quiet machine), --threads 2:

    model   clients  req/s on / off        p50 on / off (ms)   p95 on / off (ms)
    shapes     1     3.52 / 3.29  (1.07x)      286 /    279        420 /    614
    shapes     4     7.96 / 5.08  (1.57x)      433 /    906        956 /   1305
    shapes     8     7.13 / 4.36  (1.64x)      946 /   1837       1829 /   3957
    r50        1     0.04 / 0.05  (0.90x)    24666 /  22381      25632 /  23618
    r50        4     0.04 / 0.04  (0.90x)   109776 /  94553     110112 /  97330
    r50        8     0.04 / 0.04  (1.01x)   134826 / 138541     219582 / 220906

Batching (mean batch 3.1 at 4 clients, 4.0 at 8) pays for the small model, whose per-call
overhead is a large share; R50 on the CPU gains nothing (its convolutions already fill both
cores, as DEFAULT_BATCH_SIZE in inference/api.py notes), within this machine's noise.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "serve")]

import maskrcnn  # noqa: E402
from maskrcnn.checkpoint import save_model  # noqa: E402
from maskrcnn.checkpoint.seeded import seeded_state_dict  # noqa: E402
from maskrcnn.data.shapes import generate_shapes_dataset  # noqa: E402
from serve_helpers import post_many, running_server  # noqa: E402
from testing_utils import PARITY, parity_keys, spread_output_layers  # noqa: E402

CLIENTS = (1, 4, 8)


def shapes_model(folder: Path) -> tuple[Path, list[bytes]]:
    config = yaml.safe_load((ROOT / "maskrcnn" / "configs" / "shapes_cpu.yaml").read_text())["model"]
    preset = config.pop("preset")
    torch.manual_seed(0)
    model = maskrcnn.build_preset(preset, **config, num_classes=4, class_names=["circle", "square", "triangle"])
    spread_output_layers(model)
    weights = save_model(model.eval(), folder / "shapes" / "model.safetensors")
    annotations = generate_shapes_dataset(folder / "shapes_data", 8, seed=0)
    images = [p.read_bytes() for p in sorted((annotations.parent / "images").glob("*.png"))]
    return weights, images


def r50_model(folder: Path) -> tuple[Path, list[bytes]]:
    model = maskrcnn.from_torchvision(seeded_state_dict(parity_keys("v1")), "v1")
    weights = save_model(model.eval(), folder / "r50" / "model.safetensors")
    return weights, [(PARITY / "coffee.png").read_bytes()]


def measure(url: str, images: list[bytes], clients: int, requests: int) -> dict:
    start = time.perf_counter()
    # a generous client timeout: R50 batches take minutes on a busy 2-core machine
    results = post_many(url, [images[i % len(images)] for i in range(requests)], clients, timeout=1800)
    elapsed = time.perf_counter() - start
    failed = [(status, body[:200]) for status, body, _ in results if status != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} of {requests} requests failed, e.g. {failed[0]}")
    latencies = sorted(seconds for _, _, seconds in results)
    batches = [json.loads(body)["batch_size"] for _, body, _ in results]
    quantile = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"clients": clients, "requests": requests, "rps": requests / elapsed,
            "p50_ms": 1000 * quantile(0.50), "p95_ms": 1000 * quantile(0.95),
            "mean_batch": statistics.fmean(batches)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("shapes", "r50"), default=["shapes", "r50"])
    parser.add_argument("--requests", type=int, default=160, help="per configuration, shapes model")
    parser.add_argument("--r50-requests", type=int, default=8, help="per configuration, R50 (1 client: half)")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--max-batch-size", type=int, default=4, help="of the batching rows")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            weights, images = (shapes_model if name == "shapes" else r50_model)(Path(tmp))
            # one throwaway server first: the first process after writing the weights runs
            # several times slower (cold caches) and would bias whichever row came first
            with running_server(weights, threads=args.threads, ready_timeout=300) as (url, _):
                measure(url, images, 1, 4 if name == "shapes" else 2)
            base = args.requests if name == "shapes" else args.r50_requests
            batching = {"on": ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)],
                        "off": ["--max-batch-size", "1"]}
            for clients in CLIENTS:
                requests = base if clients > 1 else max(2, base // 2)
                for mode, flags in batching.items():
                    # a fresh server per row, warmed with a few requests at this concurrency
                    with running_server(weights, *flags, "--timeout", "600", threads=args.threads,
                                        ready_timeout=300) as (url, _):
                        # warm: one request per client (R50: one in all, each costs seconds)
                        measure(url, images, clients, clients if name == "shapes" else 1)
                        row = {"model": name, "batching": mode, **measure(url, images, clients, requests)}
                    rows.append(row)
                    print(f"{name:6} batching {mode:3}  {clients} clients  {row['requests']:4} req  "
                          f"{row['rps']:7.2f} req/s  p50 {row['p50_ms']:8.1f} ms  p95 {row['p95_ms']:8.1f} ms  "
                          f"mean batch {row['mean_batch']:.2f}", flush=True)
    print("\nmodel   clients  req/s on / off   p50 on / off (ms)   p95 on / off (ms)")
    for name in args.models:
        for clients in CLIENTS:
            on, off = (next(r for r in rows if (r["model"], r["batching"], r["clients"]) == (name, m, clients))
                       for m in ("on", "off"))
            print(f"{name:6} {clients:6}   {on['rps']:6.2f} / {off['rps']:6.2f} ({on['rps'] / off['rps']:.2f}x)"
                  f"   {on['p50_ms']:7.0f} / {off['p50_ms']:7.0f}   {on['p95_ms']:7.0f} / {off['p95_ms']:7.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
