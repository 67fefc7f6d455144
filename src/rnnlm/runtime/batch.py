"""The live sequences of a Generator as rows of pooled arrays, stepped as one.

Each sequence in the batch owns a row: its recurrent state, next input, token count, sampling
options and the noise of its next draws live in arrays indexed by row, so that a step is one bound
onnxruntime call over contiguous blocks and one vectorized sampling pass:

    input_ids (B,), state (L, B, H)  --onnxruntime-->  logits (B, V), next state (L, B, H)
    tokens = choose(logits, temperature, noise) for the rows past their prompt     (sampler.py)

When every row draws, with neither temperature 0 nor top-k/top-p, the choice and the check that
the logits are finite are one call of the compiled pass (_choose.c, where it was built), which writes
the tokens straight into the next step's input; otherwise numpy's passes draw the same tokens.

The state is double-buffered: a step reads the (L, B, H) block at the start of one buffer and
onnxruntime writes the next state into the other, which the next step reads; the two buffers swap
roles, so the state is never copied at a step. Rows stay compact, in the batch's own order (not
the caller's): when sequences finish or leave, those past the new end move down into the rows
they freed and the sequences joining take the rest, so that a change of rows copies only the rows
that move, never the whole batch. A sequence that leaves unfinished takes its state with it
(Sequence.state) and brings it back when it rejoins.

The noise of a row's draws depends only on its key and draw numbers, so it is computed `ahead`
draws at a time for every row that needs it, in one vectorized call. When every row draws at
every step (no prompt being fed) and their blocks are aligned, a step reads its noise as a view,
and the block after it is computed on a worker thread while onnxruntime runs the steps (both
release the GIL, so on a machine with a second core the noise costs the step loop nothing). Rows
that keep their place when the rows change keep the worker's block too; only the others' is
computed again.
In a lazy batch, the tokens of each step are logged and handed to the sequences (decoded once)
when one of them finishes or the rows change.
"""

import contextlib
import math
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache, partial

import numpy as np

from rnnlm.errors import RnnlmError
from rnnlm.runtime.sampler import COMPILED_CHOOSE, Noise, choose
from rnnlm.runtime.sequence import Sequence
from rnnlm.runtime.session import StepSession

AHEAD_ELEMENTS = 1 << 17  # the noise kept for all rows (1 MiB): `ahead` draws of V tokens per row, 1 to 256
MAX_BINDINGS = 64  # bound onnxruntime bindings kept, two per batch size (which buffer is read)
TINY = 1e-250  # temperatures below this may divide a logit difference to -inf
NO_NOISE = -(1 << 62)  # a row's first noised draw number when it has no noise yet
FIRST_DRAWS = 4  # draws computed on the step loop's thread when the worker has none of a block ready


class Batch:
    """The rows of one Generator's sequences and the arrays they index. One step at a time."""

    def __init__(self, session: StepSession, vocab_size: int, model: str) -> None:
        self.session, self.vocab_size, self.model = session, vocab_size, model
        self.noise = Noise(vocab_size)
        self.rows: list[Sequence] = []
        self.live: list[Sequence] | None = None  # the list last stepped, by identity (Generator.advance keeps one)
        self.lazy = False  # the rows' tokens are logged, and accepted by their sequences later
        self.capacity = 0
        self._parity = 0  # which state buffer holds the rows' state
        self._bindings: dict[tuple[int, int], object] = {}
        self._greedy: np.ndarray | None = None  # (B,) rows at temperature 0, None when there are none
        self._filters: tuple[np.ndarray, np.ndarray] | None = None  # top_k, top_p (B,), None when no row filters
        self._plain = True  # no row is greedy or filters: the compiled pass can choose for all
        self.compiled = COMPILED_CHOOSE  # sampler.py's compiled choice, or None where it was not built
        self._prefilling: list[int] = []  # rows still feeding their prompt
        self._overflow = contextlib.nullcontext  # a context for the choice: np.errstate where it may overflow
        self._noise_steps = 0  # steps for which every sampled row's noise is known to be there
        self._offset: int | None = None  # every row's current draw is noise[row, offset] (None: they differ)
        self._quiet_steps = 0  # steps for which no lazy row can reach its length
        self._uncounted = 0  # steps at which every row drew, not yet added to rowwise["count"]
        self._unit_temperature = False  # every row samples at temperature 1: no division
        self._log: list[tuple[np.ndarray | None, np.ndarray]] = []  # lazy steps: (rows or None for all, tokens)
        self._next: Ahead | None = None  # the next block of every row's noise, computed on the worker thread
        self._grow(8)

    # ------------------------------------------------------------------------- arrays

    def _grow(self, capacity: int) -> None:
        """(Re)allocate every row array for capacity rows, the current rows keeping their values (the fewer
        rows, the more draws of noise ahead: noise of another length is drawn again)."""
        self._drop_next()
        B0, V = len(self.rows), self.vocab_size
        before = (self.rowwise, self.state, self.input_ids) if B0 else None
        self.capacity, self.ahead = capacity, max(1, min(256, AHEAD_ELEMENTS // (capacity * V)))
        K = self.ahead
        self.state = [[np.zeros(capacity * int(np.prod(s.row_shape)), np.float32) for _ in range(2)]
                      for s in self.session.state]  # per state tensor, two flat buffers
        self.input_ids = np.zeros(capacity, np.int64)
        self.logits = np.zeros((capacity, V), np.float32)
        self._scores = np.zeros((capacity, V), np.float64)  # choose's work array
        self.rowwise = {  # what moves with a row
            "count": np.zeros(capacity, np.int64),  # tokens sampled = the next draw number
            "limit": np.zeros(capacity, np.int64),  # max_new_tokens
            "key": np.zeros(capacity, np.uint32),
            "temperature": np.ones(capacity, np.float64),  # 1 for greedy rows, which never use it
            "greedy": np.zeros(capacity, bool),
            "top_k": np.zeros(capacity, np.int64),
            "top_p": np.ones(capacity, np.float64),
            "first": np.full(capacity, NO_NOISE, np.int64),  # the draw number of noise[row, 0]
            "noise": np.zeros((capacity, K, V), np.float64),  # log(-log u) of draws first .. first + K - 1
        }
        self._next_noise = np.zeros((capacity, K, V), np.float64)  # where the worker writes the next block
        self._bindings.clear()
        if before:
            rowwise, state, input_ids = before
            self.input_ids[:B0] = input_ids[:B0]
            for name, array in rowwise.items():
                if array.shape[1:] == self.rowwise[name].shape[1:]:
                    self.rowwise[name][:B0] = array[:B0]
            if rowwise["noise"].shape[1:] != self.rowwise["noise"].shape[1:]:
                self.rowwise["first"][:B0] = NO_NOISE
            for k, tensor in enumerate(self.session.state):
                self._view(k, self._parity, B0)[...] = _shaped(state[k][self._parity], tensor, B0)

    def _view(self, k: int, buffer: int, batch_size: int) -> np.ndarray:
        """State tensor k of the first batch_size rows in one of its buffers, e.g. (L, B, H), contiguous."""
        return _shaped(self.state[k][buffer], self.session.state[k], batch_size)

    def _binding(self, batch_size: int):
        """The onnxruntime binding that reads the current buffers and writes the others, for batch_size rows."""
        key = (batch_size, self._parity)
        if key not in self._bindings:
            if len(self._bindings) >= MAX_BINDINGS:
                self._bindings.clear()
            n = len(self.state)
            self._bindings[key] = self.session.bind(
                self.input_ids[:batch_size], [self._view(k, self._parity, batch_size) for k in range(n)],
                self.logits[:batch_size], [self._view(k, 1 - self._parity, batch_size) for k in range(n)])
        return self._bindings[key]

    # ------------------------------------------------------------------------- a step

    def step(self) -> tuple[np.ndarray | slice, np.ndarray, bool]:
        """Feed every row its next token, run the step function once, draw a token for each row past its
        prompt. Returns those rows (a slice of all rows, or their indices), their tokens, and whether a
        row ended here by itself (lazy rows at their length; rows whose logits are not all finite)."""
        B = len(self.rows)
        at = None  # the rows to sample, None for all
        if self._prefilling:
            self._feed_prompts()
            if self._prefilling:
                at = np.setdiff1d(np.arange(B), self._prefilling, assume_unique=True)
        self.session.run(self._binding(B))
        self._parity = 1 - self._parity
        rw = self.rowwise
        if at is None and self._plain and self.compiled is not None:  # every row draws by the plain rule: one pass
            if self._noise_steps <= 0:
                self._refill(None)
            temperature = None if self._unit_temperature else rw["temperature"][:B]
            if self.compiled(self.logits[:B], self._noise(None), temperature, self.input_ids[:B]):
                at = self._fail_non_finite(None, self.logits[:B])  # the others' tokens are written
                tokens, ended = self.input_ids[at], True
                if not len(at):
                    return at, tokens, ended
            else:
                tokens, ended = self.input_ids[:B].copy(), False
            rows = slice(0, B) if at is None else at
        else:
            logits = self.logits[:B] if at is None else self.logits[at]  # (b, V)
            ended = False
            if not math.isfinite(np.add.reduce(logits, axis=None)):  # one pass; a sum that overflows is checked again
                at, ended = self._fail_non_finite(at, logits), True
                logits = self.logits[at]
            if at is not None and not len(at):
                return at, np.zeros(0, np.int64), ended
            rows = slice(0, B) if at is None else at
            greedy = None if self._greedy is None else self._greedy[rows]
            top_k, top_p = (None, None) if self._filters is None else (f[rows] for f in self._filters)
            temperature = None if self._unit_temperature else rw["temperature"][rows]
            if self._noise_steps <= 0:
                self._refill(at)
            with self._overflow():
                tokens = choose(logits, temperature, self._noise(at), greedy, top_k, top_p, self._scores[:len(logits)])
            self.input_ids[rows] = tokens
        if at is None:
            self._uncounted += 1
        else:
            self._count()
            rw["count"][at] += 1
        if self.lazy:
            self._log.append((at, tokens))
            ended |= self._end_lazy_rows()
        return rows, tokens, ended

    def _feed_prompts(self) -> None:
        """Prefilling rows take their next prompt token; those fed their last one are sampled from now on."""
        still = []
        for j in self._prefilling:
            s = self.rows[j]
            self.input_ids[j] = s.feed_prompt()
            if s.prefilling:
                still.append(j)
            else:
                self._noise_steps = 0  # a row to draw for the first time
        self._prefilling = still

    def _refill(self, at: np.ndarray | None) -> None:
        """Compute the noise of the rows `at` (None: all) whose block is used up, in one call, and note for
        how many steps every one of them has noise. When the other rows drawing share a block offset (the
        `phase`), the new blocks take the same one, so that all rows run out together: a row joining a
        running batch gets the draws up to the others' block end, then all refill at once (and the worker
        can compute that next block ahead)."""
        self._count()
        rw, K, B = self.rowwise, self.ahead, len(self.rows)
        rows = slice(0, B) if at is None else at
        count, limit = rw["count"][rows], rw["limit"][rows]
        left = np.minimum(rw["first"][rows] + K, limit) - count  # draws left in each row's block
        drawing = np.ones(len(left), bool) if self._greedy is None else ~self._greedy[rows]
        left[~drawing] = K  # greedy rows: never drawn
        stale = np.arange(B)[rows][left <= 0]
        if stale.size:
            first, keys = rw["count"][stale], rw["key"][stale]
            offsets = (count - rw["first"][rows])[drawing & (left > 0)]  # the others' offsets in their blocks
            phase = int(offsets[0]) if offsets.size and (offsets == offsets[0]).all() else 0
            n = min(K - phase, int((rw["limit"][stale] - first).max()))  # no draws past a row's length
            if stale.size == B:  # every row: the worker's block, for the rows it holds
                todo = self._take_next(first, keys, n)
                if todo.size == B:  # none: a few draws now, at the block's end; the next block on the worker
                    n = min(n, FIRST_DRAWS)
                    phase = K - n
                    self.noise.fill(rw["noise"][:B, phase:], keys, first)
                elif todo.size:
                    rw["noise"][todo, :n] = self.noise.fill(np.empty((todo.size, n, self.vocab_size)), keys[todo],
                                                            first[todo])
                self._start_next(first + n, keys, min(K, int((rw["limit"][:B] - first - n).max())))
            elif stale[-1] == stale.size - 1:  # rows 0 .. n-1: fill in place
                self.noise.fill(rw["noise"][:stale.size, phase:phase + n], keys, first)
            else:
                rw["noise"][stale, phase:phase + n] = self.noise.fill(np.empty((stale.size, n, self.vocab_size)),
                                                                      keys, first)
            rw["first"][stale] = first - phase  # column c of a row's block holds its draw first + c
            left[left <= 0] = np.minimum(first + n, rw["limit"][stale]) - first
        self._noise_steps = int(left.min())
        offsets = count - rw["first"][rows]
        aligned = at is None and self._greedy is None and (offsets == offsets[0]).all()
        self._offset = int(offsets[0]) if aligned else None

    def _noise(self, at: np.ndarray | None) -> np.ndarray:
        """The noise of the current draw of rows `at` (None: all), (b, V), from the blocks `_refill` made."""
        rw, B = self.rowwise, len(self.rows)
        self._noise_steps -= 1
        if at is None and self._offset is not None:
            self._offset += 1
            return rw["noise"][:B, self._offset - 1]  # (B, V) a view
        self._offset = None
        self._count()
        rows = slice(0, B) if at is None else at
        offset = rw["count"][rows] - rw["first"][rows]
        if self._greedy is not None:
            np.clip(offset, 0, self.ahead - 1, out=offset)
        return rw["noise"][np.arange(B)[rows], offset]

    def _start_next(self, first: np.ndarray, keys: np.ndarray, n: int) -> None:
        """Have the worker compute draws first .. first + n - 1 of every row into _next_noise."""
        self._drop_next()
        if n > 0:
            first, keys = first.copy(), keys.copy()
            out = self._next_noise[:len(first), :n]
            self._next = Ahead(first, keys, n, _worker().submit(_worker_noise(self.vocab_size).fill, out, keys, first))

    def _take_next(self, first: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
        """Make the worker's block the rows' noise where it holds their n draws from first (the same key and
        first draw number in the same row). Returns the rows it does not hold, which are to be filled."""
        ahead, self._next = self._next, None
        held = np.zeros(len(first), bool)
        if ahead is not None:
            ahead.job.result()
            R = min(len(first), len(ahead.first))
            if ahead.n == n:
                held[:R] = (ahead.first[:R] == first[:R]) & (ahead.keys[:R] == keys[:R])
            if held.any():
                self.rowwise["noise"], self._next_noise = self._next_noise, self.rowwise["noise"]
        return np.flatnonzero(~held)

    def _drop_next(self) -> None:
        """Forget the worker's block (after it is written: its buffer is about to be reused or reallocated)."""
        if self._next is not None:
            self._next.job.result()
            self._next = None

    def _count(self) -> None:
        """Add the steps at which every row drew to the rows' counts."""
        if self._uncounted:
            self.rowwise["count"][:len(self.rows)] += self._uncounted
            self._uncounted = 0

    def _fail_non_finite(self, at: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
        """End the sequences whose logits are not all finite; return the other rows that were to be sampled."""
        self.flush()
        at = np.arange(len(self.rows)) if at is None else at
        bad = ~np.isfinite(logits).all(axis=1)
        for j in at[bad].tolist():
            s = self.rows[j]
            s.fail(f"the model in {self.model} yielded logits that are not all finite (NaN or infinite) after "
                   f"{len(s.prompt_ids)} prompt and {len(s.token_ids)} sampled tokens: its weights or its graph "
                   "are broken; retrain or re-export it")
        self._noise_steps = 0
        return at[~bad]

    def _end_lazy_rows(self) -> bool:
        """When lazy rows reach their length, every row takes its logged tokens; True when some finished."""
        self._quiet_steps -= 1
        if self._quiet_steps > 0:
            return False
        self._count()
        B, rw = len(self.rows), self.rowwise
        left = rw["limit"][:B] - rw["count"][:B]  # >= 0
        done = (left == 0).any()
        if done:
            self.flush()
        self._quiet_steps = int(left[left > 0].min()) if (left > 0).any() else 0
        return bool(done)

    def flush(self) -> None:
        """Hand the logged tokens of lazy steps to their sequences (Sequence.accept_all)."""
        if not self._log:
            return
        log, self._log = self._log, []
        every = all(at is None for at, _ in log)  # every row drew at every step: nothing to skip
        if every:
            drawn = np.stack([tokens for _, tokens in log], axis=1)  # (B, steps)
        else:
            drawn = np.full((len(self.rows), len(log)), -1, np.int64)  # (B, steps): -1 where a row drew nothing
            for t, (at, tokens) in enumerate(log):
                drawn[slice(None) if at is None else at, t] = tokens
        for s, tokens in zip(self.rows, drawn.tolist(), strict=True):  # one conversion for all rows
            if not s.finished:
                s.accept_all(tokens if every else [token for token in tokens if token >= 0])

    # ------------------------------------------------------------------------- rows

    def arrange(self, live: list[Sequence], lazy: bool) -> None:
        """Make live (unfinished sequences started by this batch's Generator) the rows, in the batch's order:
        a sequence staying keeps its row unless the rows end before it, and the rows freed are taken by
        those past the new end, then by the sequences joining; only the rows that move are copied.
        lazy: log their tokens, to be accepted by the sequences when one finishes or the rows change."""
        self.flush()
        self._count()
        if any(s.owner is not self for s in live):
            raise RnnlmError("a Sequence can only be stepped by the Generator that started it")
        old, staying = self.rows, {id(s) for s in live}
        for r, s in enumerate(old):
            if id(s) not in staying:
                if not s.finished:
                    self._park(s, r)
                s.row = None
        B0, B = len(old), len(live)
        if B > self.capacity:
            self._grow(max(B, 2 * self.capacity))
        rows = [s if s.row is not None else None for s in old[:B]] + [None] * (B - B0)
        free = [j for j, s in enumerate(rows) if s is None]
        movers = [s for s in old[B:] if s.row is not None] + [s for s in live if s.row is None]  # as many as free
        moved = [(j, s.row) for j, s in zip(free, movers, strict=True) if s.row is not None]
        if moved:  # each row past the new end into a freed row below it: the two sets never overlap
            dst, src = np.array(moved, np.int64).T
            self.input_ids[dst] = self.input_ids[src]
            for array in self.rowwise.values():
                array[dst] = array[src]
        if B0 and B != B0 or moved:  # (L, B, H) lays rows out by B: the state is gathered into the other buffer
            take = np.minimum(np.arange(B), B0 - 1)  # rows joining take a staying row's state until _load
            if moved:
                take[dst] = src
            for k, tensor in enumerate(self.session.state):
                _shaped(self.state[k][self._parity], tensor, B0).take(
                    take, axis=tensor.batch_axis, out=self._view(k, 1 - self._parity, B), mode="clip")  # unbuffered
            self._parity = 1 - self._parity
        self.rows, self.lazy = rows, lazy
        for j, s in zip(free, movers, strict=True):
            rows[j] = s
            if s.row is None:
                self._load(j, s)
            s.row = j
        rw = self.rowwise
        self._greedy = rw["greedy"][:B] if rw["greedy"][:B].any() else None
        filtered = (rw["top_k"][:B] > 0) | (rw["top_p"][:B] < 1)
        self._filters = (rw["top_k"][:B], rw["top_p"][:B]) if filtered.any() else None
        self._plain = self._greedy is None and self._filters is None
        self._prefilling = [j for j, s in enumerate(rows) if s.prefilling]
        self._unit_temperature = self._greedy is None and (rw["temperature"][:B] == 1).all()
        tiny = (rw["temperature"][:B] < TINY).any()  # (logits - m) / temperature may overflow to -inf, as it should
        self._overflow = partial(np.errstate, over="ignore") if tiny else contextlib.nullcontext
        self._noise_steps = self._quiet_steps = 0

    def holds(self, live: list[Sequence]) -> bool:
        """Whether live (distinct sequences) are the rows, in any order."""
        return len(live) == len(self.rows) and all(s.row is not None and s.owner is self for s in live)

    def _load(self, j: int, s: Sequence) -> None:
        """Row j takes a sequence new to the batch: its options, counts and state."""
        rw, p = self.rowwise, s.params
        rw["count"][j], rw["limit"][j], rw["key"][j] = len(s.token_ids), p.max_new_tokens, s.key
        rw["temperature"][j], rw["greedy"][j] = p.temperature or 1.0, p.temperature == 0
        rw["top_k"][j], rw["top_p"][j], rw["first"][j] = p.top_k, p.top_p, NO_NOISE
        if s.token_ids:
            self.input_ids[j] = s.token_ids[-1]
        for k, tensor in enumerate(self.session.state):
            self._view(k, self._parity, len(self.rows))[_at(tensor, j)] = 0 if s.state is None else s.state[k]
        s.state = None

    def _park(self, s: Sequence, r: int) -> None:
        """Sequence s leaves row r unfinished: it takes its state along (its tokens are flushed)."""
        B = len(self.rows)
        s.state = [self._view(k, self._parity, B)[_at(tensor, r)].copy() for k, tensor in enumerate(self.session.state)]


class Ahead:
    """A block of noise the worker is computing: draws first .. first + n - 1 of rows with these keys."""

    def __init__(self, first: np.ndarray, keys: np.ndarray, n: int, job: Future) -> None:
        self.first, self.keys, self.n, self.job = first, keys, n, job


@cache
def _worker() -> ThreadPoolExecutor:
    """The one thread that computes noise ahead, for every Batch of the process."""
    return ThreadPoolExecutor(1, thread_name_prefix="rnnlm-noise")


@cache
def _worker_noise(vocab_size: int) -> Noise:
    """The worker's own Noise (its work arrays are not shared with the step loop's)."""
    return Noise(vocab_size)


def _shaped(flat: np.ndarray, tensor, batch_size: int) -> np.ndarray:
    """The first batch_size rows of a flat state buffer, in the tensor's batched shape."""
    shape = tensor.batched(batch_size)
    return flat[:int(np.prod(shape))].reshape(shape)


def _at(tensor, rows) -> tuple:
    """The index of rows (an int or an index array) along the tensor's batch axis."""
    index: list = [slice(None)] * len(tensor.shape)
    index[tensor.batch_axis] = rows
    return tuple(index)
