"""Training speed on one CUDA device: RNNLM eager, RNNLM as one CUDA graph (rnnlm.graphed) and torch's nn.RNN
(cuDNN), at three precisions, side by side. Without CUDA it prints why it was skipped.

Each contender does full training steps (forward, backward, AdamW; no clipping, as benchmarks/train.py) of a
one-layer tanh model on random batches of B streams of T = 128 tokens from a 65-symbol vocabulary, at
H/B = 512/32, 512/256, 1024/128 and 2048/256. For each size and precision the three are built (the graphed one
captures at its first step), warmed up, then take turns, STEPS steps each per round, until a time budget is spent
(at least MIN_ROUNDS rounds), so that a slow moment hits all three; a number is the median over rounds. Peak memory
is measured apart, per contender: the most allocated on the device over a few steps, less what was allocated before
the model was built (parameters, gradients, optimiser state, activations, and a graph's private pool).

    fp32   float32 matmuls everywhere: torch.set_float32_matmul_precision("highest"), cudnn.allow_tf32 off
    tf32   TF32 matmuls: set_float32_matmul_precision("high") (--model.float32_matmul_precision high), cuDNN's TF32 on
    bf16   autocast to bfloat16 (--trainer.precision bf16-mixed): the recurrence too, for RNNLM (rnnlm.bptt)

    python benchmarks/gpu.py [--seconds 3]         # or: python benchmarks/run.py gpu
"""

import argparse
import contextlib
import gc
import statistics
import time

import torch

from rnnlm.graphed import GraphedStep
from rnnlm.model import RNNLM, ModelConfig
from train import TorchRNN

VOCAB, T = 65, 128
SIZES = ((512, 32), (512, 256), (1024, 128), (2048, 256))  # (H, B)
PRECISIONS = ("fp32", "tf32", "bf16")
CONTENDERS = ("RNNLM eager", "RNNLM graphed", "nn.RNN (cuDNN)")
SECONDS, STEPS, MIN_ROUNDS = 3.0, 5, 5  # per size and precision: about 12 x 5 s in all


@contextlib.contextmanager
def precision(name: str):
    """The matmul settings of one precision, restored afterwards; under bf16, autocast."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=name == "bf16"):
            yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def contender(name: str, hidden_size: int, batch_size: int):
    """One training step of the named contender on a fixed batch, as a function of no argument."""
    torch.manual_seed(0)
    x = torch.randint(VOCAB, (batch_size, T), device="cuda")  # (B, T)
    y = torch.randint(VOCAB, (batch_size, T), device="cuda")  # (B, T)
    if name.startswith("nn.RNN"):
        model = TorchRNN("rnn", hidden_size).cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model(x, y).backward()
            optimizer.step()

        return train_step
    model = RNNLM(ModelConfig(VOCAB, hidden_size)).cuda()
    step = GraphedStep(model, torch.optim.AdamW(model.parameters(), lr=1e-3), None, None)
    run = step if name == "RNNLM graphed" else step.eager  # eager: the same step, never captured
    return lambda: run(x, y, None)


def timed(train_step) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(STEPS):
        train_step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def tokens_per_second(hidden_size: int, batch_size: int, budget_s: float) -> dict[str, list[float]]:
    """Tokens/s of each contender in each round, measured in turns at the precision in force."""
    steps = {name: contender(name, hidden_size, batch_size) for name in CONTENDERS}
    for train_step in steps.values():
        timed(train_step)  # warm-up (and the graph's capture)
    rates, start = {name: [] for name in steps}, time.perf_counter()
    while len(rates[CONTENDERS[0]]) < MIN_ROUNDS or time.perf_counter() - start < budget_s:
        for name, train_step in steps.items():
            rates[name].append(STEPS * batch_size * T / timed(train_step))
    return rates


def peak_mib(name: str, hidden_size: int, batch_size: int) -> float:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step = contender(name, hidden_size, batch_size)
    for _ in range(3):
        train_step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del train_step
    return peak / 2**20


def main(budget_s: float = SECONDS) -> str:
    title = f"### Training on CUDA: T={T}, vocab {VOCAB}, one tanh layer, forward+backward+AdamW, median over rounds"
    if not torch.cuda.is_available():
        return f"{title}\n\nskipped: no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"
    lines = [
        title, "",
        "fp32: float32 matmuls, cuDNN's TF32 off; tf32: TF32 matmuls and cuDNN (float32_matmul_precision high); "
        "bf16: autocast to bfloat16, RNNLM's recurrence included",
        "",
        "| H | B | precision | contender | tokens/s | ÷ nn.RNN (cuDNN) | peak CUDA MiB | rounds |",
        "|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for hidden_size, batch_size in SIZES:
        for name in PRECISIONS:
            with precision(name):
                rates = tokens_per_second(hidden_size, batch_size, budget_s)
                memory = {c: peak_mib(c, hidden_size, batch_size) for c in CONTENDERS}
            median = {c: statistics.median(r) for c, r in rates.items()}
            for c in CONTENDERS:
                lines.append(f"| {hidden_size} | {batch_size} | {name} | {c} | {median[c]:,.0f} | "
                             f"{median[c] / median[CONTENDERS[-1]]:.2f} | {memory[c]:,.0f} | {len(rates[c])} |")
            print(*lines[-3:], sep="\n", flush=True)  # each size as it is measured: the whole table takes minutes
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="time budget per size and precision")
    print(main(parser.parse_args().seconds))
