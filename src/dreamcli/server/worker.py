"""One job at a time on one thread, a bounded queue in front of it, and what /progress and /interrupt see."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass


class QueueFull(Exception):
    """More jobs are waiting than the server takes: the client should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full: retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is stopping: the job was cancelled or never started."""

    def __init__(self):
        super().__init__("the server is shutting down: the job was not finished")


class Interrupted(Exception):
    """Raised inside a running job (from its step callback) by /interrupt or shutdown."""


@dataclass
class State:
    """What /sdapi/v1/progress shows."""

    job_count: int = 0  # waiting and running
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    cancelled: bool = False  # the running job's client went away (its results go nowhere)
    started: float | None = None  # when the running job started, None when idle


class Worker:
    """Runs submitted jobs one after another on a single thread (one model, one device: one job at a time).

    A job is a function taking the step callback; it may call that callback between denoising steps, and the
    callback raises Interrupted once /interrupt or shutdown asked for it. Jobs return their results through
    concurrent Futures, so HTTP handlers can await them without blocking the event loop.
    """

    def __init__(self, queue_size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._lock = threading.Lock()
        self._interrupt = threading.Event()
        self._stopping = False
        self._seconds = 5.0  # a running average of job times, for Retry-After
        self._running: Future | None = None
        self.state = State()
        self._thread = threading.Thread(target=self._loop, name="dream-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[Callable[[int, int], None]], object]) -> Future:
        """Queue a job; raises QueueFull when the queue is full and ShuttingDown once the server stops."""
        future: Future = Future()
        with self._lock:
            if self._stopping:
                raise ShuttingDown()
            try:
                self._queue.put_nowait((future, job))
            except queue.Full:
                waiting = self._queue.qsize() + 1
                raise QueueFull(max(1, round(self._seconds * waiting))) from None
            self.state.job_count += 1
        return future

    def cancel(self, future: Future) -> None:
        """The client of this job went away: drop it if it waits, stop it at its next step if it runs."""
        if future.cancel():
            return
        if future is self._running:
            self.state.cancelled = True
            self._interrupt.set()

    def interrupt(self) -> None:
        """Stop the running job at its next step (A1111's /interrupt); waiting jobs still run."""
        if self.state.started is not None:
            self._interrupt.set()
            self.state.interrupted = True

    def shutdown(self) -> None:
        """Cancel the running job at its next step and answer every waiting one with ShuttingDown.

        Safe to call from a signal handler: it never blocks.
        """
        with self._lock:
            self._stopping = True
        self._interrupt.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            future, _ = item
            self.state.job_count -= 1
            if future.set_running_or_notify_cancel():
                future.set_exception(ShuttingDown())
        try:
            self._queue.put_nowait(None)  # wakes the thread so that it ends
        except queue.Full:
            pass

    @property
    def stopping(self) -> bool:
        """True once shutdown() was called."""
        return self._stopping

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the running job to stop."""
        self._thread.join(timeout)

    def on_step(self, done: int, total: int) -> None:
        """The step callback jobs get: records progress, and raises Interrupted when asked to stop."""
        self.state.sampling_step, self.state.sampling_steps = done, total
        if self._interrupt.is_set():
            raise Interrupted()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, job = item
            if not future.set_running_or_notify_cancel():  # the client went away while it waited
                self.state.job_count -= 1
                continue
            if self._stopping:
                self.state.job_count -= 1
                future.set_exception(ShuttingDown())
                continue
            self._interrupt.clear()
            self.state.interrupted = self.state.cancelled = False
            self.state.sampling_step = self.state.sampling_steps = 0
            self.state.started = time.monotonic()
            self._running = future
            try:
                future.set_result(job(self.on_step))
            except BaseException as e:  # noqa: BLE001 - every failure goes back to the one client it belongs to
                future.set_exception(e)
            finally:
                self._running = None
                self._seconds = 0.7 * self._seconds + 0.3 * (time.monotonic() - self.state.started)
                self.state.started = None
                self.state.job_count -= 1
