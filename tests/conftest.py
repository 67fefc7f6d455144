"""Shared fixtures: corpora, a runner for the real `rnnlm` command, and an exported model."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rnnlm.cli import QUIET_WARNINGS

ROOT = Path(__file__).resolve().parents[1]
# The first 149,961 bytes of tinyshakespeare (public domain), cut at a blank line; the tests' own text:
# sha256 d12812287b36c11bbe1fefbabcf76e61407f76f00fb1e2bfa1d8e9da52c511cf
CORPUS = ROOT / "tests" / "data" / "tinyshakespeare-150k.txt"


def pytest_configure(config) -> None:
    for message in QUIET_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}")


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The tests' whole corpus: about 150 KB of Shakespeare."""
    return CORPUS


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """Its first 20,000 characters: enough for every tokenizer test, quick to train on."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    return path


# Python code that makes torch, Lightning and onnx unimportable: prefixed to a subprocess's program, it
# proves that what runs after it never imports them.
BLOCK_TORCH = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "lightning", "pytorch_lightning", "onnx", "onnxscript"}:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocked())
"""


def relative_error(a, b) -> float:
    """|a - b| / |b| of two tensors, as a float."""
    return ((a - b).norm() / b.norm()).item()


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
    from rnnlm.model import RNNLM, ModelConfig
    from rnnlm.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train(small_corpus.read_text())
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(tokenizer.vocab_size, hidden_size=32, num_layers=2)).eval()
    folder = write_export(model, tokenizer, tmp_path_factory.mktemp("export") / "char")
    return SimpleNamespace(folder=folder, model=model, tokenizer=tokenizer)


@pytest.fixture(params=["compiled", "numpy"])
def chooser(request, monkeypatch):
    """Runs a test twice: the rows drawing by the plain rule choose by the compiled pass (_choose.c; skipped
    where setup.py could not build it), then by numpy's. Call it on a Generator to set which; returns it."""
    from rnnlm.runtime.sampler import COMPILED_CHOOSE

    if request.param == "compiled" and COMPILED_CHOOSE is None:
        pytest.skip("the compiled sampling pass was not built (no C compiler at install); numpy chooses")

    def use(gen):
        monkeypatch.setattr(gen.batch, "compiled", COMPILED_CHOOSE if request.param == "compiled" else None)
        return gen

    return use
