"""Drawing the next token from logits: temperature (0 = greedy), top-k, top-p, per-sequence randomness.

A token is drawn by the Gumbel-max trick: with u(i) uniform in [0, 1) and g(i) = -log(-log u(i)),

    argmax_i  o(i) / temperature + g(i)   is distributed as   softmax(o / temperature)

so sampling needs no normalisation, no cumulative sum and no sort (u = 0 gives g = -inf: that
token is simply not drawn). top-k (a partition) and top-p (a sort) only run for the sequences that
ask for them. Each sequence draws from its own numpy Generator, so its tokens do not depend on
which other sequences share its batch.
"""

import math
from dataclasses import dataclass

import numpy as np

from rnnlm.errors import RnnlmError

RULE = "gumbel-lowbias32/1"  # the sampling rule's name, written in every manifest (docs/sampling.md)


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is sampled. top_k 0 and top_p 1 switch those filters off; seed None draws
    fresh entropy. Generation stops after max_new_tokens, or before the first of the stop strings."""

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
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise RnnlmError(f"seed must be an integer >= 0 or None, got {self.seed!r}")
        return self


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def sample(logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator]) -> np.ndarray:
    """One token per row. logits: (B, V); params and rngs: one per row. Returns ids (B,) int64.

    A greedy row (temperature 0) takes the argmax and draws no random numbers."""
    drawn = [i for i, p in enumerate(params) if p.temperature > 0]
    if len(drawn) < len(params):
        tokens = logits.argmax(axis=1)  # (B,)
        if drawn:
            tokens[drawn] = sample(logits[drawn], [params[i] for i in drawn], [rngs[i] for i in drawn])
        return tokens
    z = logits / np.array([p.temperature for p in params])[:, None]  # (B, V) float64
    V = z.shape[1]
    u = np.empty_like(z)  # (B, V)
    for j, (p, rng) in enumerate(zip(params, rngs, strict=True)):
        rng.random(out=u[j])
        if 0 < p.top_k < V:
            keep_top_k(z[j], p.top_k)
        if p.top_p < 1:
            keep_top_p(z[j], p.top_p)
    with np.errstate(divide="ignore"):
        z -= np.log(-np.log(u))  # + g
    return z.argmax(axis=1)


def keep_top_k(z: np.ndarray, k: int) -> None:
    """Set all but the k largest of z (V,) to -inf, in place (ties with the k-th are kept)."""
    kth = np.partition(z, len(z) - k)[len(z) - k]
    z[z < kth] = -np.inf


def keep_top_p(z: np.ndarray, top_p: float) -> None:
    """Keep the fewest most probable tokens of softmax(z) whose mass reaches top_p; the rest to -inf."""
    order = np.argsort(-z)  # (V,) most probable first
    p = np.exp(z[order] - z[order[0]])
    mass = np.cumsum(p) / p.sum()
    n = min(int(np.searchsorted(mass, top_p)) + 1, len(z))
    z[order[n:]] = -np.inf
