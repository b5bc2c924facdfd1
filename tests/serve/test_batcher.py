"""The dynamic batcher: batch sizes, the wait, failures isolated, cancelled jobs skipped."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from maskrcnn.serve.batcher import DynamicBatcher


class Recorder:
    """run_batch that records each batch; the first call waits for `gate`; payload "bad" fails."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, payloads):
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(payloads))
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [p * 2 for p in payloads]


def started(run, **kwargs):
    batcher = DynamicBatcher(run, **kwargs)
    batcher.start()
    return batcher


def test_waiting_jobs_are_batched_up_to_the_maximum():
    run = Recorder(hold_first=True)
    batcher = started(run, max_batch_size=4, max_wait_s=0.0)
    try:
        jobs = [batcher.submit(0)]
        assert run.entered.wait(5)  # the worker holds job 0; the next nine queue up behind it
        jobs += [batcher.submit(i) for i in range(1, 10)]
        run.gate.set()
        assert [job.future.result(5) for job in jobs] == [2 * i for i in range(10)]
    finally:
        batcher.stop()
    assert run.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert [job.batch_size for job in jobs] == [1, 4, 4, 4, 4, 4, 4, 4, 4, 1]
    assert (batcher.batches_run, batcher.jobs_run) == (4, 10)


def test_max_batch_size_one_runs_jobs_alone():
    run = Recorder(hold_first=True)
    batcher = started(run, max_batch_size=1, max_wait_s=0.05)
    try:
        jobs = [batcher.submit(0)]
        assert run.entered.wait(5)
        jobs += [batcher.submit(i) for i in (1, 2)]
        run.gate.set()
        [job.future.result(5) for job in jobs]
    finally:
        batcher.stop()
    assert run.batches == [[0], [1], [2]]


def test_a_lone_job_waits_max_wait_for_company_and_takes_what_comes():
    run = Recorder()
    batcher = started(run, max_batch_size=8, max_wait_s=0.3)
    try:
        start = time.perf_counter()
        first = batcher.submit(1)
        time.sleep(0.05)
        second = batcher.submit(2)  # within the wait: same batch
        assert (first.future.result(5), second.future.result(5)) == (2, 4)
        elapsed = time.perf_counter() - start
    finally:
        batcher.stop()
    assert run.batches == [[1, 2]]
    assert 0.3 <= elapsed < 2.0  # it waited the full max_wait for more, then ran


def test_a_failing_job_fails_alone():
    run = Recorder(hold_first=True)
    batcher = started(run, max_batch_size=4, max_wait_s=0.0)
    try:
        jobs = [batcher.submit(0)]
        assert run.entered.wait(5)
        jobs += [batcher.submit(p) for p in (1, "bad", 3)]
        run.gate.set()
        assert jobs[1].future.result(5) == 2 and jobs[3].future.result(5) == 6
        with pytest.raises(ValueError, match="bad payload"):
            jobs[2].future.result(5)
        # and the worker is still alive
        assert batcher.submit(5).future.result(5) == 10
    finally:
        batcher.stop()
    assert run.batches[1] == [1, "bad", 3]  # the batch, then each job alone
    assert run.batches[2:5] == [[1], ["bad"], [3]]


def test_a_cancelled_job_never_runs():
    run = Recorder(hold_first=True)
    batcher = started(run, max_batch_size=4, max_wait_s=0.0)

    async def scenario():
        first = batcher.submit(0)
        assert run.entered.wait(5)
        task = asyncio.ensure_future(batcher.run(7))
        await asyncio.sleep(0.05)
        task.cancel()  # as a request timeout does
        with pytest.raises(asyncio.CancelledError):
            await task
        run.gate.set()
        assert first.future.result(5) == 0
        output, job = await batcher.run(8)
        return output

    try:
        assert asyncio.run(scenario()) == 16
    finally:
        batcher.stop()
    assert [7] not in run.batches and all(7 not in b for b in run.batches)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(lambda p: p, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        DynamicBatcher(lambda p: p, max_wait_s=-1)
    with pytest.raises(RuntimeError, match="not started"):
        DynamicBatcher(lambda p: p).submit(1)
