"""Generation speed: the torch-free runtime (onnxruntime step + numpy sampler) against a torch eager
sampling loop of the same model (RNNLM.step, softmax, multinomial, hidden state carried).

The model has the default size: one 512-unit tanh layer over a 65-symbol vocabulary (tinyshakespeare's
characters), with random weights, since speed does not depend on what the weights say. Each contender
samples `tokens` new tokens per sequence at temperature 1 from the start token, at batch 1 and batch 64;
the runtime runs with onnxruntime's own thread count (its default) and with one thread (which holds up
best when other work shares the cores).
The contenders of one batch size take turns round after round, so a slow-down of the shared machine
hits them alike; a number is the median over rounds, after a warm-up run.

    python benchmarks/generate.py [--tokens 1000] [--rounds 7]
"""

import argparse
import statistics
import tempfile
import time
from functools import partial

import torch

from rnnlm.export import write_export
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.runtime import Generator
from rnnlm.tokenizers import CharTokenizer

VOCAB, HIDDEN = 65, 512
BATCH_SIZES = (1, 64)


@torch.no_grad()
def torch_eager(model: RNNLM, batch_size: int, tokens: int) -> None:
    """The loop a torch user writes: step, softmax, multinomial, one token per sequence per step."""
    generator = torch.Generator().manual_seed(0)
    hidden = model.init_hidden(batch_size)  # (L, B, H)
    x = torch.zeros(batch_size, dtype=torch.long)  # (B,) the start token
    for _ in range(tokens):
        logits, hidden = model.step(x, hidden)  # (B, V), (L, B, H)
        x = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]  # (B,)


def runtime(generator: Generator, batch_size: int, tokens: int) -> None:
    if batch_size == 1:
        generator.generate("", max_new_tokens=tokens, temperature=1.0, seed=0)
    else:
        generator.generate_batch([""] * batch_size, max_new_tokens=tokens, temperature=1.0, seed=0)


def tokens_per_second(fn, batch_size: int, tokens: int) -> float:
    start = time.perf_counter()
    fn(batch_size, tokens)
    return batch_size * tokens / (time.perf_counter() - start)


def main(tokens: int = 1000, rounds: int = 7) -> str:
    """A markdown table of tokens/s per contender and batch size, with the runtime's speed-up over torch."""
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(VOCAB, HIDDEN)).eval()
    tokenizer = CharTokenizer("".join(chr(32 + i) for i in range(VOCAB - 1)) + "\n")
    with tempfile.TemporaryDirectory() as folder:
        exported = write_export(model, tokenizer, f"{folder}/model")
        generators = {"onnxruntime's threads": Generator.load(exported),
                      "1 thread": Generator.load(exported, threads=1)}
    contenders = {f"runtime ({threads})": partial(runtime, g) for threads, g in generators.items()}
    contenders["torch eager"] = partial(torch_eager, model)
    rows = ["| batch | contender | tokens/s | runtime / torch |", "|---:|---|---:|---:|"]
    for B in BATCH_SIZES:
        n = tokens if B == 1 else max(tokens // 10, 10)
        for fn in contenders.values():
            fn(B, n // 10)  # warm-up
        rates = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, fn in contenders.items():
                rates[name].append(tokens_per_second(fn, B, n))
        median = {name: statistics.median(r) for name, r in rates.items()}
        for name, rate in median.items():
            ratio = f"{rate / median['torch eager']:.2f}x" if name.startswith("runtime") else ""
            rows.append(f"| {B} | {name} | {rate:,.0f} | {ratio} |")
    note = (f"H={HIDDEN}, V={VOCAB}, one tanh layer, temperature 1, from the start token; median of {rounds} rounds; "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads.")
    return "\n".join(["### Generation: runtime (onnxruntime) vs torch eager sampling loop", "", note, "", *rows])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1000, help="new tokens per sequence at batch 1 (a tenth at 64)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(main(args.tokens, args.rounds))
