"""What a training run logged: its loss curves (`rnnlm plot RUN_DIR [RUN_DIR ...] --out curves.png`)
and the summary `rnnlm fit` prints at its end.

A run folder (`--trainer.default_root_dir` of `rnnlm fit`) holds one logs/version_N/metrics.csv per
start of the run: a resumed run starts a new version at the step of its checkpoint, so the versions
are joined by step, each later one replacing what an earlier one logged from its first step on.
Curves are drawn against the step and against the tokens seen, step x batch_size x seq_len x world
size, from the run's config.yaml. No torch: matplotlib and the CSV files only.
"""

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

from rnnlm.errors import RnnlmError

METRICS = ("train/loss", "train/tokens_per_s", "val/loss", "val/bpc")  # what module.py logs
VAL_METRICS = ("loss", "bpc")  # what the validation curve shows: val/loss (nats per token) or val/bpc


@dataclass
class Curves:
    """One run's logged metrics, joined across its versions."""

    name: str
    rows: dict[str, list[tuple[int, float]]]  # each of METRICS -> its (step, value) rows
    tokens_per_step: int | None  # batch_size x seq_len x world size, None where the config lacks them

    def best(self) -> tuple[int, float, float] | None:
        """(step, val/loss, val/bpc) of the lowest val/loss, or None before any validation."""
        if not self.rows["val/loss"]:
            return None
        step, loss = min(self.rows["val/loss"], key=lambda row: row[1])
        return step, loss, dict(self.rows["val/bpc"]).get(step, math.nan)


def _in_versions(run: Path, name: str) -> list[Path]:
    """The file `name` of each logs/version_N of a run, oldest version first."""
    return sorted((run / "logs").glob(f"version_*/{name}"), key=lambda p: int(p.parent.name.split("_")[-1]))


def _versions(run: Path) -> list[Path]:
    logs = _in_versions(run, "metrics.csv")
    if not logs:
        raise RnnlmError(f"{run} has no logs/version_N/metrics.csv; give the folder of a run of `rnnlm fit` "
                         "(its --trainer.default_root_dir, e.g. runs/char)")
    return logs


def read_curves(run: str | Path) -> Curves:
    """The metrics of a run folder, its versions joined by step."""
    run = Path(run)
    columns = {name: [] for name in METRICS}
    for path in _versions(run):
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(int(r["step"]), r) for r in csv.DictReader(f) if r.get("step", "").isdigit()]
        if not rows:
            continue
        first = min(step for step, _ in rows)
        for name, values in columns.items():  # what this version logged from its first step on replaces the rest
            values[:] = [(s, v) for s, v in values if s < first]
            values += [(s, float(r[name])) for s, r in rows if r.get(name) not in (None, "")]
    return Curves(run.resolve().name, columns, _tokens_per_step(run))


def _tokens_per_step(run: Path) -> int | None:
    """batch_size x seq_len x world size from the newest config.yaml of the run."""
    configs = _in_versions(run, "config.yaml")
    if not configs:
        return None
    text = configs[-1].read_text(encoding="utf-8")

    def value(section: str, key: str) -> str | None:
        block = re.search(rf"^{section}:[ \t]*(?:#.*)?\n((?:[ \t].*\n?)*)", text, re.M)
        found = block and re.search(rf"^\s+{key}:\s*(\S.*)$", block[1], re.M)
        return re.sub(r"\s#.*", "", found[1]).strip() if found else None  # without a trailing # comment

    batch, seq_len = value("data", "batch_size"), value("data", "seq_len")
    if not (batch and seq_len and batch.isdigit() and seq_len.isdigit()):
        return None
    devices, nodes = value("trainer", "devices") or "1", value("trainer", "num_nodes") or "1"
    world = (int(devices) if devices.isdigit() else 1) * (int(nodes) if nodes.isdigit() else 1)
    return int(batch) * int(seq_len) * world


def plot(runs: list[Curves], out: str | Path, val: str = "loss") -> Path:
    """Draw train/loss and val/<val> of each run against step and tokens seen, one colour per run.
    val/bpc (bits per character) gets an axis of its own on the right: its scale is not nats per token."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    if val not in VAL_METRICS:
        raise RnnlmError(f"the validation curve is one of {', '.join(VAL_METRICS)}, got {val!r}")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    val_axes = [ax.twinx() for ax in axes] if val == "bpc" else axes
    for k, run in enumerate(runs):
        color = colors[k % len(colors)]
        for ax, val_ax, scale in zip(axes, val_axes, (1, run.tokens_per_step), strict=True):
            if scale is not None:
                _line(ax, run.rows["train/loss"], scale, "-", color, f"{run.name} train/loss", alpha=0.45, lw=1)
                _line(val_ax, run.rows[f"val/{val}"], scale, "o-", color, f"{run.name} val/{val}", lw=1.8, ms=3)
    for ax, val_ax, xlabel in zip(axes, val_axes, ("step", "tokens seen (step x batch x seq_len x world size)"),
                                  strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats per token)")
        ax.grid(alpha=0.3)
        if val_ax is not ax:
            val_ax.set_ylabel("val/bpc (bits per character)")
            val_ax.legend(loc="upper center", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_title("against optimizer steps")
    axes[1].set_title("against tokens seen")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _line(ax, rows: list[tuple[int, float]], scale: int, style: str, color: str, label: str, **kwargs) -> None:
    if rows:
        steps, values = zip(*rows, strict=True)
        ax.plot([s * scale for s in steps], values, style, color=color, label=label, **kwargs)


def summary(run: Path, seconds: float, curves: Curves | None, curves_png: Path | None) -> str:
    """The lines `rnnlm fit` ends with: the best validation and its step, time and speed, the files
    written, and the commands that come next. curves is None where the run logged no metrics."""
    lines, (minutes, rest) = [], divmod(round(seconds), 60)
    speeds = sorted(value for _, value in curves.rows["train/tokens_per_s"]) if curves else []
    speed = f", {speeds[len(speeds) // 2]:,.0f} tokens/s in training (median)" if speeds else ""
    lines.append(f"rnnlm fit finished in {minutes} min {rest} s{speed}")
    if curves is None:
        lines.append("no metrics were logged: the run was shorter than --trainer.log_every_n_steps and "
                     "--trainer.val_check_interval")
    elif best := curves.best():
        step, loss, bpc = best
        lines.append(f"best val/loss {loss:.4f} nats per token, val/bpc {bpc:.4f}, at step {step:,}")
    checkpoints = [p for p in (run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt") if p.exists()]
    if checkpoints:
        lines.append(f"checkpoints: {', '.join(str(p) for p in checkpoints)}")
    if curves_png is not None:
        lines.append(f"curves:      {curves_png}")
    lines.append(f"next:        make export RUN_DIR={run} NAME={run.name} && make sample NAME={run.name} "
                 'PROMPT="ROMEO:"')
    return "\n".join(lines)
