"""One sequence being generated: its hidden-state row, random generator, tokens and emitted text.

A Sequence first feeds its prompt tokens one per step (prefill; their logits are not sampled
except the last one's), then feeds back each token it samples. It turns tokens into text
incrementally: a subword tokenizer's byte pieces are held until they form whole characters, and
text that could be the start of a stop string is held until it is known not to be one, so the
pieces it emits join to exactly the final text, which never contains a stop string.
"""

import numpy as np

from rnnlm.runtime.sampler import SamplingParams
from rnnlm.tokenizers import Tokenizer

MAX_CHAR_BYTES = 4  # a UTF-8 character spans at most 4 byte pieces
REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete byte sequence to


class Sequence:
    """State of one generation. Made by Generator.start, advanced by Generator.step (alone or batched
    with others), done when `finish_reason` is set: "stop" (a stop string) or "length" (max_new_tokens)."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, hidden: np.ndarray, tokenizer: Tokenizer) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.hidden = hidden  # (L, H) float32: h(t-1) of every layer, owned by this sequence
        self.prompt_ids = prompt_ids
        self.token_ids: list[int] = []  # the sampled tokens
        self.text = ""  # the text emitted so far
        self.finish_reason: str | None = None
        self._fed = 0  # prompt tokens fed so far
        self._tokenizer = tokenizer
        self._undecoded: list[int] = []  # tokens whose text is not yet whole characters
        self._held = ""  # decoded text not yet emitted: it may begin a stop string

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def input_id(self) -> int:
        """The token this sequence feeds at its next step."""
        return self.prompt_ids[self._fed] if self._fed < len(self.prompt_ids) else self.token_ids[-1]

    def fed(self) -> bool:
        """Record that input_id was fed; True when the logits it produced are to be sampled."""
        if self._fed < len(self.prompt_ids):
            self._fed += 1
            return self._fed == len(self.prompt_ids)
        return True

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
