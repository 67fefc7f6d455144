"""Training throughput: RNNLM with the hand-written backward, RNNLM with autograd's, and torch's own layer
(nn.RNN, nn.GRU, nn.LSTM), for each cell.

Each contender does full training steps (forward, backward, AdamW step) on random batches of B = 64
streams of T = 128 tokens from a 65-symbol vocabulary (tinyshakespeare's characters). After a warm-up
step each, the contenders of one size take turns, one step each per round, for rounds until a time
budget is spent (at least MIN_ROUNDS), so a slow-down of a shared machine hits them alike; a number is
the median over rounds, and beside it the best round (on a busy machine, the nearer to its unloaded
speed; where the two ratios disagree, the machine was too busy to tell). Peak memory is measured in a
fresh process per contender: after a warm-up with a tiny model, the peak resident set over a few
training steps less the resident set before the model was built, so it counts parameters, gradients,
optimiser state and activations (Linux only: it reads /proc; on CUDA, the peak allocated instead).
The last row is the seed's way for reference: one sequence, a numpy loop, Adagrad (with the rnn cell).

    python benchmarks/train.py [--cells rnn gru lstm] [--sizes 256 512] [--seconds 30] [--device cpu]
    python benchmarks/train.py --cells gru lstm --seconds 5     # the gated rows alone, in a few minutes
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.model import RNNLM, ModelConfig

VOCAB, B, T = 65, 64, 128
TORCH_LAYERS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}  # each cell's own torch layer, the baseline
SIZES = {"rnn": (256, 512, 1024), "gru": (256, 512), "lstm": (256, 512)}
SECONDS_PER_SIZE, MIN_ROUNDS = 30.0, 5  # the timing of make bench: about 7 x 30 s on a 2-core CPU


def contenders(cell: str) -> tuple[str, ...]:
    return ("RNNLM manual", "RNNLM autograd", f"nn.{TORCH_LAYERS[cell].__name__}")


class TorchRNN(nn.Module):
    """The reference: Embedding + nn.RNN/GRU/LSTM + Linear, time-major like RNNLM inside (torch's fastest layout)."""

    def __init__(self, cell: str, hidden_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden_size)
        self.rnn = TORCH_LAYERS[cell](hidden_size, hidden_size)
        self.head = nn.Linear(hidden_size, VOCAB)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hs, _ = self.rnn(self.embed(input_ids.t()))  # (T, B, H)
        logits = self.head(hs)  # (T, B, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.t().flatten())


def contender(name: str, cell: str, hidden_size: int, device: str):
    """One training step (forward, backward, AdamW) of the named contender with the cell, on a fixed batch."""
    torch.manual_seed(0)
    if name.startswith("nn."):
        model = TorchRNN(cell, hidden_size).to(device)
        loss_fn = model
    else:
        model = RNNLM(ModelConfig(VOCAB, hidden_size, cell=cell, bptt=name.split()[1])).to(device)
        loss_fn = lambda x, y: model(x, None, y)[2]  # noqa: E731
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(VOCAB, (B, T), device=device)  # (B, T)
    y = torch.randint(VOCAB, (B, T), device=device)  # (B, T)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        optimizer.step()

    return train_step


def seconds(train_step, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def tokens_per_second(cell: str, hidden_size: int, budget_s: float, device: str) -> dict[str, list[float]]:
    """Training tokens/s of each contender in each round, measured in turns."""
    steps_of = {name: contender(name, cell, hidden_size, device) for name in contenders(cell)}
    for train_step in steps_of.values():
        train_step()  # warm-up
    rates, start = {name: [] for name in steps_of}, time.perf_counter()
    while len(rates["RNNLM manual"]) < MIN_ROUNDS or time.perf_counter() - start < budget_s:
        for name, train_step in steps_of.items():
            rates[name].append(B * T / seconds(train_step, device))
    return rates


def peak_memory_mib(name: str, cell: str, hidden_size: int, device: str) -> float:
    """Peak memory of training, in a fresh process so earlier contenders leave no trace."""
    out = subprocess.run(
        [sys.executable, __file__, "--peak-memory", name, cell, str(hidden_size), "--device", device],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def resident_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise KeyError(field)


def measure_peak_memory(name: str, cell: str, hidden_size: int, device: str) -> float:
    contender(name, cell, 8, device)()  # loads the kernels and thread pools, which are not the model's memory
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    else:
        return math.nan
    before = resident_mib("VmRSS")
    train_step = contender(name, cell, hidden_size, device)
    for _ in range(3):
        train_step()
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resident_mib("VmHWM") - before


def seed_chars_per_second(rounds: int, hidden_size: int = 100, seq_len: int = 25, lr: float = 0.1) -> float:
    """The seed's way: one sequence at a time, forward and backward by hand in numpy, Adagrad."""
    rng = np.random.default_rng(0)
    data = rng.integers(VOCAB, size=seq_len * 200 + 1)
    U = rng.standard_normal((hidden_size, VOCAB)) * 0.01  # input to hidden
    W = rng.standard_normal((hidden_size, hidden_size)) * 0.01  # hidden to hidden
    V = rng.standard_normal((VOCAB, hidden_size)) * 0.01  # hidden to output
    b, c = np.zeros(hidden_size), np.zeros(VOCAB)
    params = [U, W, V, b, c]
    memory = [np.zeros_like(p) for p in params]  # Adagrad's sums of squared gradients

    def train_step(x: np.ndarray, y: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
        h, p = {-1: h_prev}, {}
        for t in range(seq_len):
            h[t] = np.tanh(U[:, x[t]] + W @ h[t - 1] + b)
            o = V @ h[t] + c
            e = np.exp(o - o.max())
            p[t] = e / e.sum()
        dU, dW, dV, db, dc = (np.zeros_like(q) for q in params)
        dh_next = np.zeros(hidden_size)
        for t in reversed(range(seq_len)):
            g = p[t].copy()
            g[y[t]] -= 1  # ∂L/∂o(t)
            dV += np.outer(g, h[t])
            dc += g
            da = (1 - h[t] ** 2) * (V.T @ g + dh_next)
            dU[:, x[t]] += da
            dW += np.outer(da, h[t - 1])
            db += da
            dh_next = W.T @ da
        for q, dq, m in zip(params, (dU, dW, dV, db, dc), memory, strict=True):
            np.clip(dq, -5, 5, out=dq)
            m += dq * dq
            q -= lr * dq / np.sqrt(m + 1e-8)
        return h[seq_len - 1]

    rates = []
    for _ in range(rounds + 1):  # the first is the warm-up
        h, start = np.zeros(hidden_size), time.perf_counter()
        for i in range(0, len(data) - 1, seq_len):
            h = train_step(data[i : i + seq_len], data[i + 1 : i + seq_len + 1], h)
        rates.append((len(data) - 1) / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def main(
    cells: tuple[str, ...] = tuple(TORCH_LAYERS),
    sizes: tuple[int, ...] | None = None,
    budget_s: float = SECONDS_PER_SIZE,
    device: str | None = None,
) -> str:
    """The table: for each cell, at its SIZES (or `sizes`), the three contenders side by side."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    memory = "peak CUDA MiB" if device == "cuda" else "peak RSS MiB"
    lines = [
        f"### Training on {device}: B={B}, T={T}, vocab {VOCAB}, one layer, forward+backward+AdamW, median over rounds",
        "",
        f"| cell | contender | H | tokens/s | RNNLM manual ÷ this | best round | ÷ this, best | {memory} | rounds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        for hidden_size in sizes or SIZES[cell]:
            rates = tokens_per_second(cell, hidden_size, budget_s, device)
            median = {name: statistics.median(r) for name, r in rates.items()}
            best = {name: max(r) for name, r in rates.items()}
            for name in contenders(cell):
                mib = peak_memory_mib(name, cell, hidden_size, device)
                lines.append(
                    f"| {cell} | {name} | {hidden_size} | {median[name]:,.0f} | "
                    f"{median['RNNLM manual'] / median[name]:.2f} | {best[name]:,.0f} | "
                    f"{best['RNNLM manual'] / best[name]:.2f} | {mib:,.0f} | {len(rates[name])} |"
                )
    if "rnn" in cells:
        seed = seed_chars_per_second(MIN_ROUNDS)
        lines.append(f"| rnn | the seed's way: numpy, batch 1, T=25, Adagrad (chars/s) | 100 | {seed:,.0f} | | | | | "
                     f"{MIN_ROUNDS} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", choices=list(TORCH_LAYERS), nargs="+", default=list(TORCH_LAYERS))
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="H values (default: each cell's SIZES)")
    parser.add_argument("--seconds", type=float, default=SECONDS_PER_SIZE, help="time budget per size")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--peak-memory", nargs=3, metavar=("CONTENDER", "CELL", "H"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory:
        name, cell, hidden_size = args.peak_memory
        print(json.dumps(measure_peak_memory(name, cell, int(hidden_size), args.device or "cpu")))
    else:
        print(main(tuple(args.cells), tuple(args.sizes) if args.sizes else None, args.seconds, args.device))
