"""The sampling rule gumbel-lowbias32/1: the next token from logits, the same in every language.

docs/sampling.md states the rule and its test vectors. In short, with all integer arithmetic on
unsigned 32-bit words (modulo 2^32):

    key(seed)   = lowbias32((seed mod 2^32) ^ lowbias32((seed >> 32) ^ 0x9E3779B9))    seed in [0, 2^64)
    bits(n, i)  = lowbias32(key + lowbias32(n + lowbias32(i)))     n: the draw number, i: the token id
    u(n, i)     = ((bits >> 8) + 0.5) / 2^24                        in (0, 1), exact in float64
    token       = argmax over kept i of (logits[i] - m) / temperature - log(-log u(n, i))   in float64

m is the largest kept logit, ties go to the lowest id, temperature 0 is the argmax of the logits
(no draw). By the Gumbel-max trick the token is distributed as softmax(logits / temperature) over
the kept tokens. The draws are counter-based: a sequence carries no generator state, only its key
and how many tokens it has drawn, so a whole batch is drawn in one vectorized pass, and the noise
of future draws (which depends on neither the logits nor the batch) can be computed ahead
(`gumbel`). top-k keeps the tokens at least as likely as the k-th; top-p then keeps the shortest
prefix, in descending order, whose mass reaches top_p.
"""

import math
import os
from dataclasses import dataclass, replace

import numpy as np

from rnnlm.errors import RnnlmError

try:  # the choice of rows without filters as one compiled pass (_choose.c), built by setup.py where it can be
    from rnnlm.runtime._choose import choose as COMPILED_CHOOSE
except ImportError:  # no C compiler at install: `choose` below draws the same tokens with numpy
    COMPILED_CHOOSE = None

RULE = "gumbel-lowbias32/1"  # the sampling rule's name, written in every manifest (docs/sampling.md)
SEEDS = 1 << 64  # seeds are integers in [0, SEEDS); batch offsets s + i wrap modulo SEEDS
KEY_SALT = 0x9E3779B9
U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is sampled. top_k 0 and top_p 1 switch those filters off; seed None draws
    one from the OS's entropy when the sequence starts (Generator.start). Generation stops after
    max_new_tokens, or before the first of the stop strings."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 200
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def check(self, max_new_tokens_cap: int) -> "SamplingParams":
        """Raise RnnlmError naming the first bad value and its valid range; return self."""
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise RnnlmError(f"temperature must be a number >= 0 (0 is greedy), got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise RnnlmError(f"top_k must be an integer >= 0 (0 keeps every token), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise RnnlmError(f"top_p must lie in (0, 1] (1 keeps every token), got {self.top_p!r}")
        if not _is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= max_new_tokens_cap:
            raise RnnlmError(
                f"max_new_tokens must be an integer from 1 to {max_new_tokens_cap} (this generator's cap), "
                f"got {self.max_new_tokens!r}; ask for fewer tokens or raise the cap (max_new_tokens_cap)"
            )
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise RnnlmError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < SEEDS):
            raise RnnlmError(f"seed must be an integer from 0 to 2**64 - 1 (or None for a fresh one), "
                             f"got {self.seed!r}")
        return self

    def seeded(self) -> "SamplingParams":
        """These params with their seed, or with one drawn from the OS's entropy when it is None: the
        seed a caller can report, so that the same text can be drawn again."""
        return self if self.seed is not None else replace(self, seed=int.from_bytes(os.urandom(8), "little"))

    def offset(self, k: int) -> "SamplingParams":
        """These params for item k of a batch seeded s: seed (s + k) mod 2^64 (a seed is drawn first if None)."""
        return replace(self, seed=(self.seeded().seed + k) % SEEDS)


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- the counter-based draws

SHIFTS = np.uint32(8), np.uint32(15), np.uint32(16)  # numpy scalars: no conversion at each call
LOWBIAS32 = 0x7FEB352D, 0x846CA68B  # lowbias32's two multipliers
MULTIPLIERS = np.uint32(LOWBIAS32[0]), np.uint32(LOWBIAS32[1])


def lowbias32(x: np.ndarray) -> np.ndarray:
    """Chris Wellons' lowbias32 integer hash of every element of x, modulo 2^32: a new uint32 array."""
    x = np.array(x, np.uint32)
    return _hash(x, np.empty_like(x))


def _hash(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """lowbias32 in place on x (uint32), with t (x's shape) to work in; returns x."""
    _, s15, s16 = SHIFTS
    np.right_shift(x, s16, out=t)
    x ^= t
    x *= MULTIPLIERS[0]
    np.right_shift(x, s15, out=t)
    x ^= t
    x *= MULTIPLIERS[1]
    np.right_shift(x, s16, out=t)
    x ^= t
    return x


def seed_key(seed: int) -> int:
    """key(seed) for a seed in [0, 2^64): the 32-bit word every draw of the sequence starts from (in
    Python integers: for one word, numpy's calls would cost ten times the arithmetic)."""
    return _lowbias32_int((seed & U32) ^ _lowbias32_int(((seed >> 32) ^ KEY_SALT) & U32))


def _lowbias32_int(x: int) -> int:
    """lowbias32 of one word, in Python integers (the same steps as _hash)."""
    x ^= x >> 16
    x = (x * LOWBIAS32[0]) & U32
    x ^= x >> 15
    x = (x * LOWBIAS32[1]) & U32
    return x ^ (x >> 16)


def draw_bits(key: int, draws: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """bits(n, i) = lowbias32(key + lowbias32(n + lowbias32(i))), broadcast over draw numbers n and ids i."""
    inner = lowbias32(np.asarray(draws, np.uint32) + lowbias32(ids))
    return lowbias32(np.uint32(key) + inner)


def uniform(bits: np.ndarray) -> np.ndarray:
    """u = ((bits >> 8) + 0.5) / 2^24 in (0, 1): 25 significant bits, exact in float64 (not in float32)."""
    return ((np.asarray(bits, np.uint32) >> SHIFTS[0]) + 0.5) * 2.0**-24


class Noise:
    """The noise of the rule, log(-log u(n, i)), which a score subtracts, for blocks of draws of many
    rows at once. The work arrays are kept between calls: fresh temporaries of this size would
    cost page faults at every call, more than the arithmetic."""

    def __init__(self, vocab_size: int) -> None:
        self.ids = lowbias32(np.arange(vocab_size))  # (V,) lowbias32(i)
        self._work = np.empty(0, np.uint32)

    def fill(self, out: np.ndarray, keys: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Write the noise of draws first .. first + K - 1 of each row into out (R, K, V) float64 (a view
        will do); keys: (R,) uint32, first: (R,) the rows' first draw numbers. Returns out."""
        R, K, V = out.shape
        if self._work.size < 2 * out.size:
            self._work = np.empty(2 * out.size, np.uint32)
        x = self._work[:out.size].reshape(out.shape)  # (R, K, V) uint32
        t = self._work[out.size:2 * out.size].reshape(out.shape)
        first = np.asarray(first, np.int64)
        if (first == first[0]).all():  # rows drawing in step share lowbias32(n + lowbias32(i)): hash it once
            inner = (first[0] + np.arange(K)).astype(np.uint32)[:, None] + self.ids  # (K, V) mod 2^32
            _hash(inner, np.empty_like(inner))
            np.add(np.asarray(keys, np.uint32)[:, None, None], inner, out=x)
        else:
            n = (first[:, None] + np.arange(K)).astype(np.uint32)  # (R, K) mod 2^32
            np.add(n[:, :, None], self.ids, out=x)
            _hash(x, t)
            x += np.asarray(keys, np.uint32)[:, None, None]
        _hash(x, t)
        x >>= SHIFTS[0] - 1
        x |= 1  # 2 (bits >> 8) + 1
        np.multiply(x, 2.0**-25, out=out)  # u = ((bits >> 8) + 0.5) / 2^24, exactly
        np.log(out, out=out)
        np.negative(out, out=out)
        return np.log(out, out=out)  # log(-log u)


# ----------------------------------------------------------------------------- choosing the token


def choose(logits: np.ndarray, temperature: np.ndarray | None, noise: np.ndarray, greedy: np.ndarray | None = None,
           top_k: np.ndarray | None = None, top_p: np.ndarray | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """The rule's token for each row: argmax of (logits - m) / temperature - noise over the kept tokens.

    logits: (B, V) float32, all finite; temperature: (B,) float64 > 0, or None when every row's is 1
    (dividing by 1 is exact: it is skipped); noise: (B, V) float64, log(-log u) of each row's draw;
    greedy: (B,) bool, or None when no row is greedy (those rows take the argmax of their logits,
    and their temperature and noise are not read); top_k, top_p: (B,), or None when no row filters;
    out: (B, V) float64 to work in, or None. Returns ids (B,) int64."""
    # (B, V) logits - m in float64 (both cast before the subtraction); m, the largest logit, is kept by every filter
    z = np.subtract(logits, logits.max(axis=1, keepdims=True), out=out, dtype=np.float64)
    if temperature is not None:
        if greedy is not None:
            temperature = np.where(greedy, 1.0, temperature)
        z /= temperature[:, None]  # 0 for the largest, < 0 or -inf for the rest: finite at any temperature
    if top_k is not None:
        rows = np.flatnonzero((top_k > 0) | (top_p < 1))
        if len(rows):
            z[rows] = np.where(kept(logits[rows].astype(np.float64), z[rows], top_k[rows], top_p[rows]), z[rows],
                               -np.inf)
    z -= noise
    tokens = z.argmax(axis=1)  # ties: the lowest id
    if greedy is not None:
        tokens[greedy] = logits[greedy].argmax(axis=1)
    return tokens


def kept(logits: np.ndarray, z: np.ndarray, top_k: np.ndarray, top_p: np.ndarray) -> np.ndarray:
    """Which tokens top-k, then top-p over what top-k kept, keep. logits and z = (logits - m) / temperature:
    (R, V) float64; top_k: (R,), 0 keeps all; top_p: (R,), 1 keeps all. Returns (R, V) bool."""
    R, V = logits.shape
    order = np.argsort(-logits, axis=1, kind="stable")  # (R, V) descending logit, ties by the lower id
    ranked = np.take_along_axis(logits, order, axis=1)  # (R, V)
    k = np.where((top_k > 0) & (top_k < V), top_k, V)
    keep = ranked >= ranked[np.arange(R), k - 1][:, None]  # (R, V) in ranked order; ties with the k-th kept
    nucleus = top_p < 1
    if nucleus.any():
        w = np.where(keep, np.exp(np.take_along_axis(z, order, axis=1)), 0.0)  # (R, V)
        c = np.cumsum(w, axis=1)  # summed left to right: c_1, c_2, ..., and C = c_V
        last = np.argmax(c >= (top_p * c[:, -1])[:, None], axis=1)  # the shortest prefix with c_j >= top_p C
        keep &= ~nucleus[:, None] | (np.arange(V) <= last[:, None])
    mask = np.empty_like(keep)
    np.put_along_axis(mask, order, keep, axis=1)
    return mask


def sample(logits: np.ndarray, params: list[SamplingParams], draws: np.ndarray | list[int]) -> np.ndarray:
    """One token per row by the rule. logits: (B, V); params: one per row, each with a seed; draws: each
    row's draw number n (how many tokens its sequence has drawn before). Returns ids (B,) int64."""
    logits = np.asarray(logits, np.float32)
    if any(p.seed is None for p in params):
        raise RnnlmError("sample needs a seed in every row's SamplingParams: a draw is a function of the seed")
    if bad := np.flatnonzero(~np.isfinite(logits).all(axis=1)).tolist():
        raise RnnlmError(f"the logits of row(s) {bad} are not all finite (NaN or infinite): there is nothing to "
                         "sample from; check the model that produced them")
    B, V = logits.shape
    keys = np.array([seed_key(p.seed) for p in params], np.uint32)
    noise = Noise(V).fill(np.empty((B, 1, V)), keys, np.asarray(draws, np.int64))[:, 0]  # (B, V)
    temperature = np.array([p.temperature for p in params], np.float64)
    greedy = temperature == 0
    top_k = np.array([p.top_k for p in params], np.int64)
    top_p = np.array([p.top_p for p in params], np.float64)
    with np.errstate(over="ignore"):  # a tiny temperature divides logit differences to -inf, as the rule says
        return choose(logits, temperature, noise, greedy if greedy.any() else None, top_k, top_p)
