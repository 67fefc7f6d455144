"""Bits per character of a text under an exported model, through the runtime alone.

The text is one stream: the start token, then every token of the text, each step's logits scoring
the next token, the hidden state carried from the first token to the last. As in training,

    bpc = Σ_t −log ŷ(t)[y(t)] / ln 2 / characters

so char and subword models, float32 and int8 exports, compare on one scale.
"""

import math
from dataclasses import dataclass

import numpy as np

from rnnlm.errors import RnnlmError
from rnnlm.runtime.generator import Generator

CHUNK = 4096  # steps whose logits are scored together


@dataclass(frozen=True)
class Score:
    bpc: float
    nats: float  # the summed negative log-likelihood
    tokens: int
    chars: int


def bits_per_character(generator: Generator, text: str, unknown: str = "error") -> Score:
    """Score text under generator's model; unknown as in Generator.start (char vocabularies only)."""
    if not text:
        raise RnnlmError("the text to score is empty; give a file with some text in it")
    targets = np.asarray(generator.tokenizer.encode(text, unknown=unknown), dtype=np.int64)  # (T,)
    if len(targets) == 0:
        raise RnnlmError("no token of the text is in the vocabulary (all were dropped); score another text")
    inputs = np.concatenate([[generator.start_token], targets[:-1]])  # (T,): the start token predicts the first
    session = generator.session
    buffers = session.buffers(1)
    buffers.reset()
    nats = 0.0
    logits = np.empty((CHUNK, generator.manifest.vocab_size), np.float32)  # (chunk, V)
    for start in range(0, len(inputs), CHUNK):
        n = min(CHUNK, len(inputs) - start)
        for t in range(n):
            buffers.input_ids[0] = inputs[start + t]
            session.run(buffers)
            logits[t] = buffers.logits[0]
            buffers.carry()
        nats += _nll(logits[:n], targets[start:start + n])
    return Score(bpc=nats / math.log(2) / len(text), nats=nats, tokens=len(targets), chars=len(text))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax(logits) over the last axis, in float64: the largest logit is subtracted first, so
    that exp cannot overflow. logits: (n, V) -> (n, V)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Σ −log softmax(logits)[target]. logits: (n, V), targets: (n,)."""
    return -float(log_softmax(logits)[np.arange(len(targets)), targets].sum())
