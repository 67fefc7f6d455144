"""Generator: an exported folder loaded once, then text on demand, one sequence or many at a time.

`step` advances a batch of sequences by one token: each feeds its next token (a prompt token during
prefill, else the token it sampled last), the step function runs once for all of them over their
pooled state (batch.py), and every sequence past its prompt draws one token by the sampling rule
(sampler.py, docs/sampling.md) and releases its text. `stream` is a loop over it for one sequence;
a server builds its own loop the same way. `generate` and `generate_batch` without stop strings
need no text before the end: their loop keeps the tokens in the batch and decodes each sequence
once, when it finishes. The text is the same either way. A server steps its batch by `advance`:
several steps at a time, lazily where no sequence has stop strings, their text taken when it stops.
"""

from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from dataclasses import fields, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from rnnlm.errors import RnnlmError
from rnnlm.runtime.batch import Batch
from rnnlm.runtime.manifest import MAX_NEW_TOKENS_CAP, Manifest, load_manifest
from rnnlm.runtime.sampler import SamplingParams
from rnnlm.runtime.sequence import Sequence
from rnnlm.runtime.session import StepSession
from rnnlm.tokenizers import UNKNOWN_POLICIES, Tokenizer


class Generator:
    """An exported model ready to sample: its manifest, one onnxruntime session, its tokenizer, and
    the sampling defaults of its manifest. max_new_tokens_cap bounds what any request may ask for."""

    def __init__(self, manifest: Manifest, session: StepSession, tokenizer: Tokenizer,
                 max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP) -> None:
        if not isinstance(max_new_tokens_cap, int) or max_new_tokens_cap < 1:
            raise RnnlmError(f"max_new_tokens_cap must be an integer >= 1, got {max_new_tokens_cap!r}")
        self.manifest, self.session, self.tokenizer = manifest, session, tokenizer
        self.max_new_tokens_cap = max_new_tokens_cap
        self.start_token = manifest.generation["start_token"]
        g = manifest.generation  # checked by load_manifest as a request is; its length is kept within the cap
        self.defaults = SamplingParams(g["temperature"], g["top_k"], g["top_p"],
                                       min(g["max_new_tokens"], max_new_tokens_cap)).check(max_new_tokens_cap)

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None,
             max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP) -> "Generator":
        """Check the manifest, the sha256 of its files, the tokenizer against its type and the graph
        against the manifest, then open one onnxruntime session (threads: its intra-op thread count;
        None lets onnxruntime choose). A bad folder raises one RnnlmError here, never later."""
        manifest = load_manifest(path)
        tokenizer = manifest.load_tokenizer()
        return cls(manifest, StepSession(manifest.read_model(), manifest, threads), tokenizer, max_new_tokens_cap)

    # ------------------------------------------------------------------------- the engine

    @cached_property
    def batch(self) -> Batch:
        """The pooled rows of the sequences this generator steps."""
        return Batch(self.session, self.manifest.vocab_size, str(self.manifest.folder))

    def params(self, **overrides) -> SamplingParams:
        """SamplingParams from the manifest's defaults and the given fields (None keeps a default), checked,
        with a seed: the one given, or one drawn from the OS's entropy (so that it can be reported)."""
        names = [f.name for f in fields(SamplingParams)]
        if unknown := sorted(set(overrides) - set(names)):
            raise RnnlmError(f"unknown sampling option(s) {unknown}: the options are {', '.join(names)}")
        stop = overrides.get("stop")
        if isinstance(stop, str | list | tuple):  # one string or several; anything else fails the check
            overrides["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self.defaults, **given).check(self.max_new_tokens_cap).seeded()

    def start(self, prompt: str, params: SamplingParams | None = None, unknown: str = "error") -> Sequence:
        """A new sequence for prompt (the start token for an empty one) with a zero state. params without a
        seed get one from the OS's entropy (sequence.params.seed). unknown says what to do with prompt
        characters absent from a char vocabulary: error, drop, replace."""
        if not isinstance(prompt, str):
            raise RnnlmError(f"a prompt must be a string, got {type(prompt).__name__}")
        if unknown not in UNKNOWN_POLICIES:
            raise RnnlmError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, got {unknown!r}")
        params = (params or self.defaults).check(self.max_new_tokens_cap)
        prompt_ids = self.tokenizer.encode(prompt, unknown=unknown) or [self.start_token]
        sequence = Sequence(prompt_ids, params, self.tokenizer)
        sequence.owner = self.batch
        return sequence

    def step(self, sequences: Seq[Sequence]) -> list[str]:
        """Advance every unfinished sequence by one token in one batched call of the step function.
        Returns the text each sequence released at this step ('' during prefill and when finished)."""
        at = [i for i, s in enumerate(sequences) if s.finish_reason is None]  # where each row's sequence is
        pieces = [""] * len(sequences)
        if not at:
            return pieces
        live = [sequences[i] for i in at]
        sampled, tokens, _ = self._step_rows(live, lazy=False)
        rows, where = self.batch.rows, {id(s): i for i, s in zip(at, live, strict=True)}
        for j, token in zip(range(len(rows))[sampled] if isinstance(sampled, slice) else sampled.tolist(),
                            tokens.tolist(), strict=True):
            pieces[where[id(rows[j])]] = rows[j].accept(token)
        return pieces

    def advance(self, sequences: Seq[Sequence], more: Callable[[bool], bool]) -> tuple[list[str], int]:
        """Step the unfinished sequences at least once, and again while some are unfinished and more(ended)
        says so (ended: a sequence finished at this step). A server's loop steps until its next write
        is due, or something waits for it. Returns the text each sequence released over those steps,
        and how many steps ran. Without stop strings the steps are lazy: the tokens stay in the batch
        and are decoded once, at the end; with them, each step decodes (Generator.step)."""
        before = [len(s.text) for s in sequences]
        live = [s for s in sequences if not s.finished]
        lazy = not any(s.params.stop for s in live)
        steps = 0
        while live:
            steps += 1
            if lazy:
                ended = self._step_rows(live, lazy=True)[2]
            else:
                self.step(live)
                ended = any(s.finished for s in live)
            if ended:
                live = [s for s in live if not s.finished]
            if not more(ended):
                break
        self.batch.flush()
        return [s.text[n:] for s, n in zip(sequences, before, strict=True)], steps

    def _step_rows(self, live: list[Sequence], lazy: bool) -> tuple[np.ndarray | slice, np.ndarray, bool]:
        """One step of the batch with live (unfinished) as its rows, in any order: Batch.step."""
        batch = self.batch
        if lazy != batch.lazy or live is not batch.live and not batch.holds(live):
            batch.arrange(live, lazy)
        batch.live = live
        return batch.step()

    def _run(self, sequences: list[Sequence]) -> None:
        """Step sequences until all finish: lazily (tokens decoded at the end) where none has stop strings."""
        self.advance(sequences, lambda ended: True)
        if failed := next((s for s in sequences if s.error), None):
            raise RnnlmError(failed.error)

    # ------------------------------------------------------------------------- text in, text out

    def stream(self, prompt: str, max_new_tokens: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, stop: str | Seq[str] = (),
               seed: int | None = None, unknown: str = "error") -> Iterator[str]:
        """The new text after prompt, piece by piece as it is sampled (the prompt is not repeated).
        Options left None take the manifest's defaults; bad options raise here, before any step."""
        params = self.params(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             stop=stop, seed=seed)
        return self._pieces(self.start(prompt, params, unknown))

    def _pieces(self, sequence: Sequence) -> Iterator[str]:
        while not sequence.finished:
            piece = self.step([sequence])[0]
            if piece:
                yield piece
        if sequence.error:
            raise RnnlmError(sequence.error)

    def generate(self, prompt: str, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, stop: str | Seq[str] = (),
                 seed: int | None = None, unknown: str = "error") -> str:
        """The new text after prompt: the text stream's pieces join to."""
        params = self.params(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             stop=stop, seed=seed)
        sequence = self.start(prompt, params, unknown)
        self._run([sequence])
        return sequence.text

    def generate_batch(self, prompts: Seq[str], max_new_tokens: int | None = None, temperature: float | None = None,
                       top_k: int | None = None, top_p: float | None = None, stop: str | Seq[str] = (),
                       seed: int | Seq[int] | None = None, unknown: str = "error") -> list[str]:
        """The new text after each prompt, all sampled together. seed: one per prompt, or an int s giving
        prompt i the seed (s + i) mod 2^64, so text i equals generate(prompts[i], ..., seed=(s + i) % 2**64);
        None draws one s from the OS's entropy."""
        if isinstance(prompts, str):
            raise RnnlmError("generate_batch takes a list of prompts; use generate for a single prompt")
        one_seed = seed is None or isinstance(seed, int | np.integer)
        if not one_seed and len(seed) != len(prompts):
            raise RnnlmError(f"generate_batch got {len(seed)} seeds for {len(prompts)} prompts: "
                             "give one per prompt, or one int")
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, stop=stop)
        if one_seed:
            params = self.params(**options, seed=seed)
            choices = [params.offset(i) for i in range(len(prompts))]
        else:
            choices = [self.params(**options, seed=s) for s in seed]
        sequences = [self.start(prompt, p, unknown) for prompt, p in zip(prompts, choices, strict=True)]
        self._run(sequences)
        return [s.text for s in sequences]
