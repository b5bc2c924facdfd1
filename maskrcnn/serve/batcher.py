"""A small dynamic batcher: requests that arrive close together share one model call.

One worker thread owns the model. It takes the first waiting job, then keeps collecting more
for up to `max_wait_s` or until it has `max_batch_size`, and hands the list to `run_batch`.
The event loop only puts jobs in and awaits their futures, so `/healthz` answers while a batch
runs. `max_batch_size=1` turns batching off (each job runs alone, as soon as the worker is free).

Whether batching pays is measured, not assumed: see benchmarks/serve.py.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("maskrcnn.serve")

_STOP = object()


@dataclass
class Job:
    """One unit of work: `payload` goes to `run_batch`; the future gets its output."""

    payload: Any
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None  # when its batch began (for the queue-time figure)
    batch_size: int = 0  # how many jobs shared its batch


class DynamicBatcher:
    """run_batch(payloads) -> outputs, one per payload, in order; it runs in the worker thread.

    If a batch of several jobs raises, each job is retried alone, so one bad job cannot fail
    the others; a job that fails alone gets the exception on its future.
    """

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], *,
                 max_batch_size: int = 4, max_wait_s: float = 0.005):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches_run = 0  # counters for /v1/model and the tests
        self.jobs_run = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="maskrcnn-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, payload: Any) -> Job:
        """Queue a job (thread-safe, never blocks); its future completes in the worker."""
        if self._thread is None:
            raise RuntimeError("the batcher is not started")
        job = Job(payload)
        self._queue.put(job)
        return job

    async def run(self, payload: Any) -> tuple[Any, Job]:
        """Queue a job and await its output. Cancelling the awaiting task (a request timeout)
        cancels a job that has not started, so the worker skips it."""
        job = self.submit(payload)
        try:
            return await asyncio.wrap_future(job.future), job
        except asyncio.CancelledError:
            job.future.cancel()
            raise

    # --- worker thread --------------------------------------------------------------------

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """`first` and whatever else arrives within max_wait_s, up to max_batch_size."""
        batch, stop = [first], False
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = self._collect(item)
            # set_running_or_notify_cancel is False for a job whose request already gave up
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._run(live)
            if stop:
                return

    def _run(self, jobs: list[Job]) -> None:
        now = time.perf_counter()
        for job in jobs:
            job.started, job.batch_size = now, len(jobs)
        try:
            outputs = list(self.run_batch([job.payload for job in jobs]))
            if len(outputs) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(outputs)} outputs for {len(jobs)} jobs")
        except BaseException as e:  # noqa: BLE001 - the worker must outlive any job
            if len(jobs) > 1:
                log.warning("a batch of %d failed (%s: %s); retrying its jobs one by one",
                            len(jobs), type(e).__name__, e)
                for job in jobs:
                    self._run([job])
                return
            jobs[0].future.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            return
        self.batches_run += 1
        self.jobs_run += len(jobs)
        for job, output in zip(jobs, outputs):
            job.future.set_result(output)
