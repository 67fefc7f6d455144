"""Shared fixtures: corpora, a runner for the real `rnnlm` command, and an exported model."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = [ROOT.parent / "shared" / "data" / "tinyshakespeare.txt", ROOT / "data" / "corpora" / "shakespeare.txt"]


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    """The tinyshakespeare corpus (skips where no copy is on the machine)."""
    for path in SHAKESPEARE:
        if path.exists():
            return path
    pytest.skip("tinyshakespeare.txt is not on this machine")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """About 20 KB of text: tinyshakespeare's beginning where present, else a generated text."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    source = next((p for p in SHAKESPEARE if p.exists()), None)
    if source is not None:
        path.write_text(source.read_text()[:20000])
    else:
        words = "to be or not to be that is the question whether tis nobler in the mind".split()
        path.write_text("\n".join(" ".join(words[(i + j) % len(words)] for j in range(9)) for i in range(2000)))
    return path


def run_rnnlm(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `rnnlm` command (a real process) and capture its output."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "rnnlm", *args]
    return subprocess.run(command, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- exported models


@pytest.fixture(scope="session")
def char_export(small_corpus, tmp_path_factory) -> SimpleNamespace:
    """A random two-layer char model (H=32) exported by rnnlm.export, no training: folder, model, tokenizer."""
    import torch

    from rnnlm.export import write_export
    from rnnlm.model import RNNLM
    from rnnlm.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train(small_corpus.read_text())
    torch.manual_seed(0)
    model = RNNLM(tokenizer.vocab_size, hidden_size=32, num_layers=2).eval()
    folder = write_export(model, tokenizer, tmp_path_factory.mktemp("export") / "char")
    return SimpleNamespace(folder=folder, model=model, tokenizer=tokenizer)
