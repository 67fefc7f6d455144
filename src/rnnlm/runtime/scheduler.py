"""Continuous batching: one loop steps every active sequence of every request as one batch.

Requests put their sequences (one per choice) in a bounded FIFO queue. Before each step the loop
drops the sequences of abandoned requests and cuts those past their deadline (or past the
shutdown grace), then fills free slots of the batch from the queue, and runs one Generator.step
for the whole batch on a worker thread, so the event loop keeps serving HTTP while onnxruntime
computes. A finished sequence leaves the batch at once and its slot goes to the next one waiting.
A sequence's text depends only on its own prompt, params and seed, never on what shares its batch.
A sequence the model fails (finish_reason "error") cuts its own request, never the rest of the batch.

Streams receive their text in flushes: a job's first text and its end go out at once, the rest
every `stream_interval` seconds, so that a stream costs one write per interval rather than one per
token (for a fast model, the writes, not the steps, would otherwise bound the throughput).
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from itertools import chain

from rnnlm.runtime.generator import Generator
from rnnlm.runtime.metrics import Metrics
from rnnlm.runtime.sequence import Sequence

log = logging.getLogger(__name__)
Piece = tuple[int, str, str | None]  # (choice index, text released, finish_reason once finished)
END = None  # the last item of a job's outbox


class QueueFull(Exception):
    """The batch and the queue have no room for a request's sequences."""


class ShuttingDown(Exception):
    """The server is draining: it takes no new requests."""


class Job:
    """One request's sequences as the scheduler runs them, and the outbox its response reads.
    A job ends when all its sequences finish, or when it is cut: `error` then says why
    ("timeout", "shutdown" or "failed")."""

    def __init__(self, sequences: list[Sequence], deadline: float, stream: bool) -> None:
        self.sequences, self.deadline, self.stream = sequences, deadline, stream
        self.error: str | None = None
        self.abandoned = False
        self.live = True  # neither ended nor abandoned
        self.done = asyncio.get_running_loop().create_future()  # its result: None, once the job ends
        self._unfinished = len(sequences)
        self._pending: list[Piece] = []  # released, not yet flushed to the outbox
        self._flushed = False
        self._outbox: asyncio.Queue[list[Piece] | None] = asyncio.Queue()

    async def pieces(self) -> AsyncIterator[tuple[list[Piece], bool]]:
        """A stream's pieces, oldest first, a flush at a time (several when the reader lags), each with
        whether the job has ended: the last yield says True (its pieces may be none)."""
        ended = False
        while not ended:
            items = [await self._outbox.get()]
            while not self._outbox.empty():
                items.append(self._outbox.get_nowait())
            ended = items[-1] is END
            yield [piece for item in items if item is not END for piece in item], ended

    def release(self, index: int, text: str, finish_reason: str | None) -> None:
        """Take what sequence index released at a step."""
        if self.stream and (text or finish_reason):
            self._pending.append((index, text, finish_reason))
        if finish_reason:
            self._unfinished -= 1
            if not self._unfinished:
                self.end(None)

    def flush(self, due: bool) -> None:
        """Hand the pending pieces to the reader when due, or when they hold the job's first text."""
        if self._pending and (due or not self._flushed):
            self._outbox.put_nowait(self._pending)
            self._pending, self._flushed = [], True

    def end(self, error: str | None) -> None:
        self.error, self.live = error, False
        self.flush(True)
        self._outbox.put_nowait(END)
        self.done.set_result(None)


class Scheduler:
    """The batching loop (`run`, one task) and the queue requests enter by `submit`."""

    def __init__(self, generator: Generator, metrics: Metrics, max_active: int, max_queued: int,
                 stream_interval: float) -> None:
        self.generator, self.metrics = generator, metrics
        self.max_active, self.max_queued, self.stream_interval = max_active, max_queued, stream_interval
        self.active: list[tuple[Job, int]] = []  # (job, choice index) stepped together
        self.waiting: deque[tuple[Job, int]] = deque()
        self._wake = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rnnlm-step")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing_at: float | None = None  # time.monotonic() at which draining cuts what is left
        self._next_flush = 0.0

    @property
    def draining(self) -> bool:
        return self._closing_at is not None

    def submit(self, sequences: list[Sequence], deadline: float, stream: bool) -> Job:
        """Queue a request's sequences; they join the batch at the next step with free slots. The job is
        cut ("timeout") once time.monotonic() passes deadline (the server's: arrival + timeout)."""
        if self.draining:
            raise ShuttingDown
        if len(self.active) + len(self.waiting) + len(sequences) > self.max_active + self.max_queued:
            raise QueueFull
        job = Job(sequences, deadline, stream)
        self.waiting.extend((job, k) for k in range(len(sequences)))
        self._wake.set()
        return job

    def abandon(self, job: Job) -> None:
        """The client is gone: its queued sequences leave now, its active ones at the next step."""
        if job.live:
            job.abandoned, job.live = True, False
            self.waiting = deque(entry for entry in self.waiting if entry[0] is not job)

    def drain(self, grace: float) -> None:
        """Take no new requests; cut the ones still running after grace seconds. Safe in a signal handler."""
        self._closing_at = time.monotonic() + grace
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Step until cancelled. An error in a step cuts the requests of its batch, never the loop."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    await self._iterate()
                except Exception:
                    log.exception("a batched step failed; its %d sequences are cut", len(self.active))
                    _cut(self.active, "failed")
                    self.active = []
        finally:
            _cut(chain(self.active, self.waiting), "shutdown")
            self._worker.shutdown(wait=False, cancel_futures=True)

    async def _iterate(self) -> None:
        self._prune()
        while self.waiting and len(self.active) < self.max_active:
            self.active.append(self.waiting.popleft())
        if self.active:
            await self._step()
        else:
            self._wake.clear()
            await self._wake.wait()

    def _prune(self) -> None:
        """Cut jobs past their deadline or the shutdown grace; drop the entries of jobs no longer live."""
        now = time.monotonic()
        closing = self._closing_at is not None and now >= self._closing_at
        for job, _ in chain(self.active, self.waiting):
            if job.live and (closing or now > job.deadline):
                job.end("shutdown" if closing else "timeout")
        self.active = [entry for entry in self.active if entry[0].live]
        self.waiting = deque(entry for entry in self.waiting if entry[0].live)

    async def _step(self) -> None:
        sequences = [job.sequences[k] for job, k in self.active]
        before = sum(len(s.token_ids) for s in sequences)
        start = time.perf_counter()
        pieces = await self._loop.run_in_executor(self._worker, self.generator.step, sequences)
        now = time.perf_counter()
        self.metrics.observe_step(now - start, len(sequences), sum(len(s.token_ids) for s in sequences) - before)
        due = now >= self._next_flush
        if due:
            self._next_flush = now + self.stream_interval
        going_on = []
        for (job, k), sequence, piece in zip(self.active, sequences, pieces, strict=True):
            if job.live and sequence.finish_reason == "error":  # the model failed this sequence alone
                log.error("the model failed a sequence (%s); its request is cut", getattr(sequence, "error", None))
                job.end("failed")
            elif job.live:
                job.release(k, piece, sequence.finish_reason)
                job.flush(due)
                if job.live and not sequence.finished:
                    going_on.append((job, k))
        self.active = going_on


def _cut(entries, reason: str) -> None:
    for job, _ in entries:
        if job.live:
            job.end(reason)
