"""Where a server's batch is stepped: in its own process, or on a thread of the server's.

The scheduler (scheduler.py) hands a Stepper its active sequences for one run of steps:
`advance(sequences, until, patient)` steps them (Generator.advance) until time.monotonic() reaches
`until`, or, once past `patient`, until an event: a sequence finishes, a new one draws its first token,
or `interrupt()` was called (new work waits, a client left). It returns the text each sequence
released and how many steps ran.

`Stepper` steps in this process. The server's HTTP work and the steps then share one interpreter
lock: while the event loop serves requests, the step loop waits for it (at 32 streaming clients,
a third of its time). `StepProcess` runs the same loop in a child process with its own copy of the
model, so that the two run side by side on two cores. The sequences stay the server's: each run
sends the child the sequences new to it (prompt ids and params) and the ids of the others, and the
child answers with what each one released (text, token ids, finish reason, error), which
`StepProcess` applies to them, so that they read as if they had been stepped here. While the server
reads one run's answer and prepares the next, the child steps on with the unfinished sequences of
the last run, and reports those steps with the next run: it never waits for the server's lock.
"""

import itertools
import multiprocessing
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from rnnlm.errors import RnnlmError
from rnnlm.runtime.generator import Generator
from rnnlm.runtime.sequence import Sequence


class Stepper:
    """Runs of steps of a Generator in this process."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self._interrupted = False

    def interrupt(self) -> None:
        """End the current run (or the next one) at the first moment past its `patient` time."""
        self._interrupted = True

    def advance(self, sequences: list[Sequence], until: float, patient: float) -> tuple[list[str], int]:
        """Step sequences until `until`, or the first event past `patient` (the module says which): the
        text each one released, and the steps run."""
        self._interrupted = False
        first = min((len(s.prompt_ids) - s.prompt_fed for s in sequences if not s.token_ids), default=0)
        asked, waits = 0, False  # a new sequence's first token comes at step `first`

        def more(ended: bool) -> bool:
            nonlocal asked, waits
            asked += 1
            now = time.monotonic()
            waits = waits or ended or asked == first or self.interrupted()
            return now < until and (not waits or now < patient)

        return self.generator.advance(sequences, more)

    def interrupted(self) -> bool:
        return self._interrupted

    def close(self) -> None:
        pass


class StepProcess(Stepper):
    """Runs of steps in a child process that loads the model folder itself (spawned: no state of this
    process is copied into it). A failure to load raises RnnlmError here; a run that fails in the
    child raises RuntimeError from `advance`, and the child goes on."""

    def __init__(self, generator: Generator, threads: int | None) -> None:
        super().__init__(generator)
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        folder, cap = generator.manifest.folder, generator.max_new_tokens_cap
        self._process = context.Process(target=_child, args=(child, folder, threads, cap), daemon=True,
                                        name="rnnlm-step")
        self._process.start()
        child.close()
        self._send_lock = threading.Lock()  # interrupt() is called from the event loop's thread
        self._keys: dict[Sequence, int] = {}  # the sequences of the last run, which the child holds, by key
        self._next_key = itertools.count()
        reply = self._receive()
        if reply[0] != "ready":
            self.close()
            raise RnnlmError(f"the step process could not load {folder}: {reply[1]}")

    def interrupt(self) -> None:
        try:
            self._send(("interrupt",))
        except OSError:  # the child is gone: the next run says so
            pass

    def advance(self, sequences: list[Sequence], until: float, patient: float) -> tuple[list[str], int]:
        keys = {s: self._keys[s] if s in self._keys else next(self._next_key) for s in sequences}
        new = [(keys[s], s.prompt_ids, s.params) for s in sequences if s not in self._keys]
        self._keys = keys
        self._send(("run", new, list(keys.values()), until, patient))
        reply = self._receive()
        if reply[0] == "failed":
            self._keys = {}  # the child forgot them
            raise RuntimeError(f"a run of steps failed in the step process: {reply[1]}")
        _, released, steps = reply
        pieces = []
        for s, (text, tokens, finish_reason, error) in zip(sequences, released, strict=True):
            s.text, s.finish_reason, s.error = s.text + text, finish_reason, error
            s.token_ids.extend(tokens)
            pieces.append(text)
        return pieces, steps

    def close(self) -> None:
        self._conn.close()  # the child reads the end of its pipe and exits
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _receive(self) -> tuple:
        try:
            return self._conn.recv()
        except EOFError:
            raise RnnlmError(f"the step process exited (exit code {self._process.exitcode})") from None


class _Piped(Stepper):
    """The step process's Stepper: interrupts arrive on its pipe while a run goes on."""

    def __init__(self, generator: Generator, conn: Connection) -> None:
        super().__init__(generator)
        self.conn = conn

    def interrupted(self) -> bool:
        while self.conn.poll():  # only interrupts come while a run goes on
            self.conn.recv()
            self._interrupted = True
        return self._interrupted


def _child(conn: Connection, folder: Path, threads: int | None, cap: int) -> None:
    """The step process: load the model, then answer runs until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server drains
    try:
        generator = Generator.load(folder, threads=threads, max_new_tokens_cap=cap)
    except Exception as e:  # the folder changed since the server checked it
        conn.send(("error", str(e)))
        return
    stepper = _Piped(generator, conn)
    held: dict[int, Sequence] = {}  # the sequences of the last run, by key
    reported: dict[int, tuple[int, int]] = {}  # how much of each one's text and tokens the server has
    ahead, failure = 0, None  # steps run, and the error met, while the server read the last run
    conn.send(("ready",))
    while True:
        unfinished = [s for s in held.values() if not s.finished]
        if unfinished and failure is None and not conn.poll():  # step on until the server's next run comes
            try:
                ahead += generator.advance(unfinished, lambda ended: not conn.poll())[1]
            except Exception as e:
                failure = f"{type(e).__name__}: {e}"
            continue
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "run":  # an interrupt that came after its run ended
            continue
        _, new, ids, until, patient = message
        for key, prompt_ids, params in new:
            held[key] = sequence = Sequence(prompt_ids, params, generator.tokenizer)
            sequence.owner = generator.batch
        held = {key: held[key] for key in ids}  # a sequence left out of a run never comes back
        reported = {key: reported.get(key, (0, 0)) for key in ids}
        try:
            if failure is not None:
                raise RuntimeError(failure)
            steps = stepper.advance(list(held.values()), until, patient)[1]
        except Exception as e:  # the scheduler cuts this run's requests; the next run starts afresh
            conn.send(("failed", failure or f"{type(e).__name__}: {e}"))
            held, reported, ahead, failure = {}, {}, 0, None
            continue
        released = []
        for key, s in held.items():  # what each one released since the server last heard of it
            chars, tokens = reported[key]
            released.append((s.text[chars:], s.token_ids[tokens:], s.finish_reason, s.error))
            reported[key] = len(s.text), len(s.token_ids)
        conn.send(("done", released, steps + ahead))
        ahead = 0
