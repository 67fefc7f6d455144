"""Generation speed: the runtime's Generator against the bare ONNX step it is built on, and against
a torch eager sampling loop of the same model.

- **Generator vs bare step.** The bare step is a loop of `InferenceSession.run` over the exported
  model.onnx, feeding back its own hidden state: no sampling, no text, nothing else. Generator runs
  `generate_batch` (no stop strings) on the same file, at the same batch size, both with one
  onnxruntime thread. Their ratio is the part of the step function's speed that reaches the user.
- **Generator vs torch.** Batch-1 `generate` against the loop a torch user writes (RNNLM.step,
  softmax, multinomial), torch with one thread (faster than two at this size).

The models have one tanh layer over a 65-symbol vocabulary (tinyshakespeare's characters) with random
weights: speed does not depend on what the weights say. Every sequence samples at temperature 1 from
the start token. The contenders of one row take turns, round after round, so a slow-down of the
shared machine hits them alike; a ratio is the median of the rounds' ratios, after a warm-up.

    python benchmarks/run.py generate                     # this table alone, through the report
    python benchmarks/generate.py [--steps 200] [--rounds 9]
"""

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from rnnlm.export import write_export
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.runtime import Generator
from rnnlm.tokenizers import CharTokenizer

VOCAB = 65
HIDDEN_SIZES = (256, 512)
BATCH_SIZES = (1, 8, 32, 64)
TORCH_HIDDEN = 256


def bare_step(session: ort.InferenceSession, batch_size: int, steps: int) -> None:
    """The step function alone: run, feed the state back."""
    ids = np.zeros(batch_size, np.int64)
    hidden = np.zeros((1, batch_size, session.get_inputs()[1].shape[2]), np.float32)
    for _ in range(steps):
        _, hidden = session.run(None, {"input_ids": ids, "past_hidden": hidden})


def generator_batch(generator: Generator, batch_size: int, steps: int) -> None:
    generator.generate_batch([""] * batch_size, max_new_tokens=steps, temperature=1.0, seed=0)


def generator_one(generator: Generator, batch_size: int, steps: int) -> None:
    generator.generate("", max_new_tokens=steps, temperature=1.0, seed=0)


@torch.no_grad()
def torch_eager(model: RNNLM, batch_size: int, steps: int) -> None:
    """The loop a torch user writes: step, softmax, multinomial, one token per sequence per step."""
    generator = torch.Generator().manual_seed(0)
    hidden = model.init_hidden(batch_size)  # (L, B, H)
    x = torch.zeros(batch_size, dtype=torch.long)  # (B,) the start token
    for _ in range(steps):
        logits, hidden = model.step(x, hidden)  # (B, V), (L, B, H)
        x = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]  # (B,)


def compare(first, second, batch_size: int, steps: int, rounds: int) -> tuple[float, float, float]:
    """Median tokens/s of two contenders taking turns round after round, and the median over rounds
    of second / first: each ratio compares runs a moment apart, so a load that comes and goes on a
    shared machine cancels out of it."""
    for fn in (first, second):
        fn(batch_size, max(steps // 10, 2))  # warm-up
    seen: list[tuple[float, float]] = []
    for _ in range(rounds):
        pair = []
        for fn in (first, second):
            start = time.perf_counter()
            fn(batch_size, steps)
            pair.append(batch_size * steps / (time.perf_counter() - start))
        seen.append((pair[0], pair[1]))
    a, b = zip(*seen, strict=True)
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in seen)


def export(hidden_size: int, folder: Path) -> tuple[RNNLM, Path]:
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(VOCAB, hidden_size=hidden_size)).eval()
    tokenizer = CharTokenizer("".join(chr(32 + i) for i in range(VOCAB - 1)) + "\n")
    return model, write_export(model, tokenizer, folder / f"h{hidden_size}")


def one_thread_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(steps: int = 200, rounds: int = 9) -> str:
    """Two markdown tables: Generator vs the bare step, and batch-1 Generator vs torch eager."""
    rows = ["| H | batch | bare ONNX step, tok/s | Generator, tok/s | Generator / bare |", "|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        models = {H: export(H, Path(tmp)) for H in HIDDEN_SIZES}
        for H, (_, folder) in models.items():
            session, generator = one_thread_session(folder / "model.onnx"), Generator.load(folder, threads=1)
            for B in BATCH_SIZES:
                bare, ours, ratio = compare(partial(bare_step, session), partial(generator_batch, generator), B,
                                            steps if B > 1 else 5 * steps, rounds)
                rows.append(f"| {H} | {B} | {bare:,.0f} | {ours:,.0f} | {ratio:.2f} |")
        model, folder = models[TORCH_HIDDEN]
        generator, threads = Generator.load(folder, threads=1), torch.get_num_threads()
        torch.set_num_threads(1)  # faster at batch 1, and no idle OpenMP thread spinning on the runtime's core
        try:
            eager, ours, ratio = compare(partial(torch_eager, model), partial(generator_one, generator), 1,
                                         5 * steps, rounds)
        finally:
            torch.set_num_threads(threads)
    vs_torch = ["| H | batch | Generator.generate, tok/s | torch eager loop, tok/s | Generator / torch |",
                "|---:|---:|---:|---:|---:|", f"| {TORCH_HIDDEN} | 1 | {ours:,.0f} | {eager:,.0f} | {ratio:.2f} |"]
    note = (f"V={VOCAB}, one tanh layer, random weights, temperature 1, from the start token; onnxruntime "
            f"{ort.__version__} with one thread for both; {steps} steps a run ({5 * steps} at batch 1); tokens/s "
            f"are medians of {rounds} rounds, and a ratio is the median of the rounds' ratios, the contenders "
            f"taking turns. torch {torch.__version__} with one thread.")
    return "\n".join(["### Generation: Generator against the bare ONNX step and a torch eager loop", "", note, "",
                      *rows, "", *vs_torch])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="new tokens per sequence in a run (5x at batch 1)")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(main(args.steps, args.rounds))
