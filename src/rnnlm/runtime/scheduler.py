"""Continuous batching: one loop steps every active sequence of every request as one batch.

Requests put their sequences (one per choice) in a bounded FIFO queue. The loop runs on a worker
thread, so that the event loop serves HTTP while the batch is stepped, by a Stepper (stepper.py;
in a process of its own under `rnnlm serve`). The loop drops the sequences of abandoned requests and
cuts those past their deadline (or past the shutdown grace), fills free slots of the batch from
the queue, and steps the batch (Stepper.advance) until something needs the event loop: a write to
the streams is due, a deadline passes, or (no sooner than PATIENCE after its last hand-over) a
sequence finishes, a new one draws its first token, or new work waits for a free slot. Then it
hands the text released over those steps to the event loop's thread, which gives it to the jobs. So
a busy server hands over once per several steps, not once per token. A finished sequence leaves the
batch at once and its slot goes to the next one waiting. A sequence's text depends only on its own
prompt, params and seed, never on what shares its batch. A sequence the model fails (finish_reason
"error") cuts its own request, never the rest of the batch.

Streams receive their text in flushes: a job's first text and its end go out at once, the rest
every `stream_interval` seconds, so that a stream costs one write per interval rather than one per
token (for a fast model, the writes, not the steps, would otherwise bound the throughput).
"""

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from itertools import chain

from rnnlm.runtime.metrics import Metrics
from rnnlm.runtime.sequence import Sequence
from rnnlm.runtime.stepper import Stepper

log = logging.getLogger(__name__)
Piece = tuple[int, str, str | None]  # (choice index, text released, finish_reason once finished)
END = None  # the last item of a job's outbox
PATIENCE = 0.005  # seconds after a hand-over before an event ends a run (at most a quarter of the write interval)


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
    """The batching loop and the queue requests enter by `submit`. `run` (one task on the event loop)
    runs the loop on a worker thread until cancelled. The worker alone takes entries off the queue and
    steps them; the jobs (their outboxes, their end) are touched only on the event loop's thread."""

    def __init__(self, stepper: Stepper, metrics: Metrics, max_active: int, max_queued: int,
                 stream_interval: float) -> None:
        self.stepper, self.metrics = stepper, metrics
        self.max_active, self.max_queued, self.stream_interval = max_active, max_queued, stream_interval
        self.active: list[tuple[Job, int]] = []  # (job, choice index) stepped together, the worker's
        self.waiting: deque[tuple[Job, int]] = deque()  # appended by submit, taken by the worker
        self._queue_lock = threading.Lock()  # over changes to `waiting`
        self._work = threading.Event()  # set when the worker, idle, has something to do
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rnnlm-step")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing_at: float | None = None  # time.monotonic() at which draining cuts what is left
        self._stopping = False

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
        with self._queue_lock:
            self.waiting.extend((job, k) for k in range(len(sequences)))
        if len(self.active) < self.max_active:  # a free slot for it at the next run of steps
            self.stepper.interrupt()
        self._work.set()
        return job

    def abandon(self, job: Job) -> None:
        """The client is gone: its sequences leave the batch or the queue at the worker's next turn."""
        if job.live:
            job.abandoned, job.live = True, False
            self.stepper.interrupt()

    def drain(self, grace: float) -> None:
        """Take no new requests; cut the ones still running after grace seconds. Safe in a signal handler."""
        self._closing_at = time.monotonic() + grace
        if self._loop is not None:  # not from the handler itself: interrupt() takes a lock the loop may hold
            self._loop.call_soon_threadsafe(self.stepper.interrupt)
        self._work.set()

    async def run(self) -> None:
        """Run the batching loop on the worker until cancelled; then cut what is left ("shutdown")."""
        self._loop = asyncio.get_running_loop()
        worker = self._loop.run_in_executor(self._worker, self._work_loop)
        try:
            await asyncio.shield(worker)
        finally:
            self._stopping = True
            self.stepper.interrupt()
            self._work.set()
            with suppress(Exception):
                await worker
            _cut(chain(self.active, self.waiting), "shutdown")
            self._worker.shutdown(wait=False)

    # ------------------------------------------------------------------------- on the worker thread

    def _work_loop(self) -> None:
        """Prune, fill free slots, run steps, post their text to the event loop; sleep when idle. An
        error in a run cuts the requests of its batch ("failed"), never the loop."""
        next_write = posted = 0.0
        while not self._stopping:
            self._prune()
            with self._queue_lock:
                while self.waiting and len(self.active) < self.max_active:
                    self.active.append(self.waiting.popleft())
            if not self.active:
                self._work.wait()
                self._work.clear()
                continue
            now = time.monotonic()
            if now >= next_write:
                next_write = now + self.stream_interval
            entries = self.active
            try:
                pieces, reasons, stats = self._run([job.sequences[k] for job, k in entries], next_write,
                                                   posted + min(PATIENCE, self.stream_interval / 4))
            except Exception:
                log.exception("a batched step failed; its %d sequences are cut", len(entries))
                self.active = []
                self._post(_cut, entries, "failed")
                continue
            self.active = [entry for entry, reason in zip(entries, reasons, strict=True) if reason is None]
            posted = time.monotonic()
            self._post(self._hand_out, entries, pieces, reasons, stats, posted >= next_write)

    def _prune(self) -> None:
        """Drop the entries of jobs no longer live, and those past their deadline or the shutdown grace
        (their jobs are cut on the event loop's thread)."""
        now = time.monotonic()
        closing = self._closing_at is not None and now >= self._closing_at
        with self._queue_lock:
            late = [entry for entry in chain(self.active, self.waiting)
                    if entry[0].live and (closing or now > entry[0].deadline)]
            if late:
                self._post(_cut, late, "shutdown" if closing else "timeout")
            self.active = [entry for entry in self.active if entry[0].live and entry not in late]
            self.waiting = deque(entry for entry in self.waiting if entry[0].live and entry not in late)

    def _run(self, sequences: list[Sequence], next_write: float,
             patient: float) -> tuple[list[str], list[str | None], tuple]:
        """Step sequences until something needs the event loop (the module's docstring says what): at
        next_write, or at the first event past `patient`. Returns each sequence's released text and
        finish_reason, and the run's seconds, steps, batch size and tokens."""
        now = time.monotonic()
        closing = [self._closing_at] if self.draining else []
        until = min(next_write, *(job.deadline for job, _ in self.active), *closing)
        before = sum(len(s.token_ids) for s in sequences)
        pieces, steps = self.stepper.advance(sequences, until, patient)
        seconds, tokens = time.monotonic() - now, sum(len(s.token_ids) for s in sequences) - before
        return pieces, [s.finish_reason for s in sequences], (seconds, steps, len(sequences), tokens)

    def _post(self, callback, *args) -> None:
        """Call callback(*args) on the event loop's thread."""
        self._loop.call_soon_threadsafe(callback, *args)

    # ------------------------------------------------------------------------- on the event loop's thread

    def _hand_out(self, entries: list[tuple[Job, int]], pieces: list[str], reasons: list[str | None],
                  stats: tuple, due: bool) -> None:
        """Give the jobs the text their sequences released in a run, and flush the streams when due."""
        self.metrics.observe_steps(*stats)
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
