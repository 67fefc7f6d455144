"""Continuous batching: one loop steps every active sequence of every request as one batch.

Requests put their sequences (one per choice) in a bounded FIFO queue. Before each run of steps
the loop drops the sequences of abandoned requests and cuts those past their deadline (or past the
shutdown grace), fills free slots of the batch from the queue, and hands the whole batch to a worker
thread (Generator.advance), so the event loop keeps serving HTTP while onnxruntime computes. The
worker steps until something needs the loop: a write to the streams is due, a deadline passes, or
(no sooner than a quarter of the write interval) a sequence finishes, a new one draws its first
token, or new work waits for a free slot. So a busy server hands off once per several steps, not
once per token; and the loop starts the next run before it hands out the last run's text, so that
the worker does not wait for the writes. A finished sequence leaves the batch at once and its slot
goes to the next one waiting. A sequence's text depends only on its own prompt, params and seed,
never on what shares its batch. A sequence the model fails (finish_reason "error") cuts its own
request, never the rest of the batch.

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
        self._next_flush = 0.0  # time.monotonic() at which the streams' next write is due
        self._interrupt = False  # set by the event loop: the worker stops stepping for it
        self._last: tuple | None = None  # the entries, texts and finish reasons of the last run, not yet handed out

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
        if len(self.active) < self.max_active:  # a free slot for it at the next run of steps
            self._interrupt = True
        self._wake.set()
        return job

    def abandon(self, job: Job) -> None:
        """The client is gone: its queued sequences leave now, its active ones at the next step."""
        if job.live:
            job.abandoned, job.live, self._interrupt = True, False, True
            self.waiting = deque(entry for entry in self.waiting if entry[0] is not job)

    def drain(self, grace: float) -> None:
        """Take no new requests; cut the ones still running after grace seconds. Safe in a signal handler."""
        self._closing_at = time.monotonic() + grace
        self._interrupt = True
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
        """Start the next run of steps, hand out the text of the last one while it runs, and wait for it."""
        self._prune()
        while self.waiting and len(self.active) < self.max_active:
            self.active.append(self.waiting.popleft())
        now = time.monotonic()
        due = now >= self._next_flush  # a write to the streams, of the last run's text
        if due:
            self._next_flush = now + self.stream_interval
        run = self._start() if self.active else None
        if self._last is not None:
            self._hand_out(*self._last, due)
            self._last = None
        if run is None:
            self._wake.clear()
            await self._wake.wait()
            return
        entries = self.active
        pieces, reasons, (seconds, steps, tokens) = await run
        self.metrics.observe_steps(seconds, steps, len(entries), tokens)
        self._last = entries, pieces, reasons
        self.active = [entry for entry, reason in zip(entries, reasons, strict=True) if reason is None]

    def _prune(self) -> None:
        """Cut jobs past their deadline or the shutdown grace; drop the entries of jobs no longer live."""
        now = time.monotonic()
        closing = self._closing_at is not None and now >= self._closing_at
        for job, _ in chain(self.active, self.waiting):
            if job.live and (closing or now > job.deadline):
                job.end("shutdown" if closing else "timeout")
        self.active = [entry for entry in self.active if entry[0].live]
        self.waiting = deque(entry for entry in self.waiting if entry[0].live)

    def _start(self) -> asyncio.Future:
        """Hand the active sequences to the worker, which steps them until something needs the loop
        (the module's docstring says what). Resolves to each sequence's released text and
        finish_reason, as they were when the run ended, and the run's seconds, steps and tokens."""
        sequences = [job.sequences[k] for job, k in self.active]
        now = time.monotonic()
        until = min(self._next_flush, *(job.deadline for job, _ in self.active),
                    *([self._closing_at] if self.draining else []))
        first = min((len(s.prompt_ids) - s.prompt_fed for s in sequences if not s.token_ids), default=0)
        patient, asked, waits = now + self.stream_interval / 4, 0, False  # a new sequence's first token: step `first`

        def more(ended: bool) -> bool:
            nonlocal asked, waits
            asked += 1
            now = time.monotonic()
            waits = waits or ended or asked == first or self._interrupt
            return now < until and (not waits or now < patient)

        def run() -> tuple[list[str], list[str | None], tuple[float, int, int]]:
            before = sum(len(s.token_ids) for s in sequences)
            start = time.monotonic()
            pieces, steps = self.generator.advance(sequences, more)
            seconds, tokens = time.monotonic() - start, sum(len(s.token_ids) for s in sequences) - before
            return pieces, [s.finish_reason for s in sequences], (seconds, steps, tokens)

        self._interrupt = False
        return self._loop.run_in_executor(self._worker, run)

    def _hand_out(self, entries: list[tuple[Job, int]], pieces: list[str], reasons: list[str | None],
                  due: bool) -> None:
        """Give the jobs the text their sequences released in a run, and flush the streams when due."""
        for (job, k), piece, reason in zip(entries, pieces, reasons, strict=True):
            if job.live and reason == "error":  # the model failed this sequence alone
                log.error("the model failed a sequence (%s); its request is cut", job.sequences[k].error)
                job.end("failed")
            elif job.live:
                job.release(k, piece, reason)
                job.flush(due)


def _cut(entries, reason: str) -> None:
    for job, _ in entries:
        if job.live:
            job.end(reason)
