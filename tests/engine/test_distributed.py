"""Two processes with DDP over gloo on CPU end with identical weights; only rank 0 writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from .conftest import tiny_overrides

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_two_process_gloo_training_keeps_ranks_identical(tiny_shapes, tmp_path):
    out = tmp_path / "run"
    n = 3
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(tmp_path),
           *tiny_overrides(tiny_shapes, out, max_iter=n), "solver.batch_size=4"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    different = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not different, f"ranks disagree on {different[:3]}"
    # rank 0's files hold the same weights, and each iteration was logged once (by rank 0 only)
    final = load_file(str(out / "model_final.safetensors"))
    assert all(torch.equal(final[k], ranks[0][k]) for k in final)
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert iterations == list(range(1, n + 1))
    # and training moved the weights away from the shared initialization
    first = load_file(str(out / "model_0000002.safetensors"))
    assert not all(torch.equal(first[k], final[k]) for k in final)
