"""One sequence being generated: its prompt, sampling options and seed, tokens and emitted text.

A Sequence first feeds its prompt tokens one per step (prefill; their logits are not sampled
except the last one's), then feeds back each token it samples. Its recurrent state lives in its
Generator's pooled arrays while it is stepped (batch.py), and in the sequence itself while it is
not. It turns tokens into text incrementally: a subword tokenizer's byte pieces are held until they
form whole characters, and text that could be the start of a stop string is held until it is known
not to be one, so the pieces it emits join to exactly the final text, which never contains a stop
string. Where no text is wanted before the end (no stop strings, nothing streamed), the tokens are
taken all at once and decoded once (`accept_all`), to the same text.
"""

import numpy as np

from rnnlm.runtime.sampler import SamplingParams, seed_key
from rnnlm.tokenizers import Tokenizer

MAX_CHAR_BYTES = 4  # a UTF-8 character spans at most 4 byte pieces
REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete byte sequence to


class Sequence:
    """State of one generation. Made by Generator.start, advanced by Generator.step (alone or batched
    with others), done when `finish_reason` is set: "stop" (a stop string), "length" (max_new_tokens)
    or "error" (the model yielded logits that are not all finite; `error` says so). params.seed is the
    seed it is sampled with: the one asked for, or one drawn from the OS's entropy."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, tokenizer: Tokenizer) -> None:
        self.params = params.seeded()
        self.key = seed_key(self.params.seed)  # the sampling rule's key(seed)
        self.prompt_ids = prompt_ids
        self.token_ids: list[int] = []  # the sampled tokens
        self.text = ""  # the text emitted so far
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.prompt_fed = 0  # prompt tokens fed so far
        self.state: list[np.ndarray] | None = None  # its recurrent state while outside a batch (None: zeros)
        self.row: int | None = None  # its row in its Generator's batch, while it is in one
        self.owner = None  # the Batch that steps it (set by Generator.start)
        self._tokenizer = tokenizer
        self._undecoded: list[int] = []  # tokens whose text is not yet whole characters
        self._held = ""  # decoded text not yet emitted: it may begin a stop string

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prefilling(self) -> bool:
        """Prompt tokens remain to be fed: the logits of this step are not sampled."""
        return self.prompt_fed < len(self.prompt_ids)

    def feed_prompt(self) -> int:
        """The next prompt token, counted as fed."""
        self.prompt_fed += 1
        return self.prompt_ids[self.prompt_fed - 1]

    def accept(self, token: int) -> str:
        """Take a sampled token; return the text it releases ('' while text is held)."""
        self.token_ids.append(token)
        self._undecoded.append(token)
        text = self._tokenizer.decode(self._undecoded)
        if not text.endswith(REPLACEMENT) or len(self._undecoded) >= MAX_CHAR_BYTES:
            self._undecoded.clear()
            self._held += text
        if len(self.token_ids) >= self.params.max_new_tokens:
            self.finish_reason = "length"
            if self._undecoded:
                self._held += self._tokenizer.decode(self._undecoded)
        return self._release()

    def accept_all(self, tokens: list[int]) -> str:
        """Take several sampled tokens at once; the same text as accepting them one by one. Decoded in one
        call where that gives the same text: a char vocabulary (one character a token) and no stop strings."""
        if self.params.stop or self._tokenizer.kind != "char" or self._undecoded:
            return "".join([self.accept(token) for token in tokens])
        self.token_ids += tokens
        if len(self.token_ids) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        text = self._tokenizer.decode(tokens)
        self.text += text
        return text

    def fail(self, error: str) -> None:
        """End the sequence with an error (its text so far stays)."""
        self.finish_reason, self.error = "error", error

    def _release(self) -> str:
        """Emit held text up to a stop string (then finish), or up to where a stop string could begin."""
        held, stop = self._held, self.params.stop
        found = [i for i in (held.find(s) for s in stop) if i >= 0] if stop else None
        if found:
            self.finish_reason, cut = "stop", min(found)
        elif self.finish_reason is not None or not stop:
            cut = len(held)
        else:
            cut = len(held) - _partial_stop(held, stop)
        self._held = held[cut:]
        self.text += held[:cut]
        return held[:cut]


def _partial_stop(text: str, stop: tuple[str, ...]) -> int:
    """The length of the longest end of text that is a proper beginning of a stop string."""
    for n in range(min(len(text), max(len(s) for s in stop) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stop):
            return n
    return 0
