"""The torch-free runtime: sample an exported folder (`rnnlm export`) with numpy and onnxruntime.

Text on demand:

    from rnnlm.runtime import Generator
    g = Generator.load("export/char")          # checks manifest.json, every file's sha256, the graph
    g.generate("ROMEO:", max_new_tokens=200, temperature=0.8, top_k=0, top_p=1.0, stop=["\\n\\n"], seed=0) -> str
    g.stream("ROMEO:", ...) -> Iterator[str]  # the same text, piece by piece
    g.generate_batch(["ROMEO:", "JULIET:"], ..., seed=0) -> list[str]   # prompt i gets seed (0 + i) mod 2**64

Options left None take the manifest's defaults; the returned text is what follows the prompt.
`unknown="drop"` or `"replace"` accepts prompt characters outside a char vocabulary (default: an
error naming them). `Generator.load(path, threads=None, max_new_tokens_cap=10_000)`.

Tokens are drawn by the written rule gumbel-lowbias32/1 (docs/sampling.md; `sample` applies it to
given logits): a seed in [0, 2**64) gives the same text in any program that implements the rule.
Without a seed, one is drawn from the OS's entropy and kept in the sequence's params.

Stepping many independent sequences as one batch (what a continuous-batching server does):

    params = g.params(temperature=0.8, max_new_tokens=100, stop=["\\n"], seed=7)  # checked, seeded SamplingParams
    seq = g.start(prompt, params, unknown="error")   # a Sequence: prompt ids, params (seed), tokens, text
    pieces = g.step(sequences)   # one batched step-function call; list[str] aligned with `sequences`
    pieces, steps = g.advance(sequences, more)   # several steps while more(ended) says so (a server's loop)
    seq.finished, seq.finish_reason ("stop" | "length" | "error"), seq.error, seq.text, seq.token_ids

Each `step` feeds every unfinished sequence its next token (a prompt token during prefill, then the
token it sampled last), runs the step function once over their pooled state, draws one token for
each sequence past its prompt, and returns the text each one released. Sequences may join or leave
the list between steps, and a prefilling sequence may share a step with decoding ones; a sequence's
text depends only on its own prompt, params and seed. A sequence whose logits are not all finite
ends with finish_reason "error" (generate, stream and generate_batch raise it); the others go on.
One Generator runs one `step` at a time; a server calls it from a single loop.
"""

from rnnlm.runtime.generator import MAX_NEW_TOKENS_CAP, Generator
from rnnlm.runtime.manifest import FORMAT, Manifest, load_manifest
from rnnlm.runtime.sampler import RULE, SamplingParams, sample
from rnnlm.runtime.sequence import Sequence

__all__ = ["FORMAT", "MAX_NEW_TOKENS_CAP", "RULE", "Generator", "Manifest", "SamplingParams", "Sequence",
           "load_manifest", "sample"]
