"""Generator: an exported folder loaded once, then text on demand, one sequence or many at a time.

`step` is the whole engine: one call of the step function for a batch of sequences, each feeding
its next token (a prompt token during prefill, else the token it sampled last) from its own
hidden-state row, then one sampled token per sequence that is past its prompt. `generate`,
`stream` and `generate_batch` are loops over it; a server builds its own loop the same way.
"""

from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from rnnlm.errors import RnnlmError
from rnnlm.runtime.manifest import MAX_NEW_TOKENS_CAP, Manifest, load_manifest
from rnnlm.runtime.sampler import SamplingParams, sample
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

    def params(self, **overrides) -> SamplingParams:
        """SamplingParams from the manifest's defaults and the given fields (None keeps a default), checked."""
        names = [f.name for f in fields(SamplingParams)]
        if unknown := sorted(set(overrides) - set(names)):
            raise RnnlmError(f"unknown sampling option(s) {unknown}: the options are {', '.join(names)}")
        stop = overrides.get("stop")
        if isinstance(stop, str | list | tuple):  # one string or several; anything else fails the check
            overrides["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self.defaults, **given).check(self.max_new_tokens_cap)

    def start(self, prompt: str, params: SamplingParams | None = None, unknown: str = "error") -> Sequence:
        """A new sequence for prompt (the start token for an empty one) with its own zero state.
        unknown says what to do with prompt characters absent from a char vocabulary: error, drop, replace."""
        if not isinstance(prompt, str):
            raise RnnlmError(f"a prompt must be a string, got {type(prompt).__name__}")
        if unknown not in UNKNOWN_POLICIES:
            raise RnnlmError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, got {unknown!r}")
        params = (params or self.defaults).check(self.max_new_tokens_cap)
        prompt_ids = self.tokenizer.encode(prompt, unknown=unknown) or [self.start_token]
        m = self.manifest
        return Sequence(prompt_ids, params, np.zeros((m.num_layers, m.hidden_size), np.float32), self.tokenizer)

    def step(self, sequences: Seq[Sequence]) -> list[str]:
        """Advance every unfinished sequence by one token in one batched call of the step function.
        Returns the text each sequence released at this step ('' during prefill and when finished)."""
        live = [i for i, s in enumerate(sequences) if s.finish_reason is None]
        pieces = [""] * len(sequences)
        if not live:
            return pieces
        batch = [sequences[i] for i in live]
        buffers = self.session.buffers(len(batch))
        buffers.input_ids[:] = [s.input_id for s in batch]
        np.stack([s.hidden for s in batch], axis=1, out=buffers.past_hidden)  # (L, B, H)
        self.session.run(buffers)
        drawing = []  # rows whose logits are sampled: every sequence past its prompt
        for j, s in enumerate(batch):
            s.hidden[...] = buffers.present_hidden[:, j]  # (L, H)
            if s.fed():
                drawing.append(j)
        if drawing:
            logits = buffers.logits if len(drawing) == len(batch) else buffers.logits[drawing]  # (b, V)
            tokens = sample(logits, [batch[j].params for j in drawing], [batch[j].rng for j in drawing])
            for j, token in zip(drawing, tokens.tolist(), strict=True):
                pieces[live[j]] = batch[j].accept(token)
        return pieces

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

    def generate(self, prompt: str, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, stop: str | Seq[str] = (),
                 seed: int | None = None, unknown: str = "error") -> str:
        """The new text after prompt: stream's pieces joined."""
        return "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, stop, seed, unknown))

    def generate_batch(self, prompts: Seq[str], max_new_tokens: int | None = None, temperature: float | None = None,
                       top_k: int | None = None, top_p: float | None = None, stop: str | Seq[str] = (),
                       seed: int | Seq[int] | None = None, unknown: str = "error") -> list[str]:
        """The new text after each prompt, all sampled together. seed: one per prompt, or an int s giving
        prompt i the seed s + i, so text i equals generate(prompts[i], ..., seed=s + i)."""
        if isinstance(prompts, str):
            raise RnnlmError("generate_batch takes a list of prompts; use generate for a single prompt")
        if seed is None or isinstance(seed, int | np.integer):
            seeds = [None if seed is None else seed + i for i in range(len(prompts))]
        elif len(seed) == len(prompts):
            seeds = list(seed)
        else:
            raise RnnlmError(f"generate_batch got {len(seed)} seeds for {len(prompts)} prompts: "
                             "give one per prompt, or one int")
        sequences = [
            self.start(prompt, self.params(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                           top_p=top_p, stop=stop, seed=s), unknown)
            for prompt, s in zip(prompts, seeds, strict=True)
        ]
        while not all(s.finished for s in sequences):
            self.step(sequences)
        return [s.text for s in sequences]
