"""The gated cells through the whole path: a GRU and an LSTM checkpoint exported (the LSTM with its cell
state as a second state tensor), stepped by onnxruntime against torch, sampled by the runtime and a server."""

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch

from rnnlm.export import export
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.runtime import Generator
from test_export import save_checkpoint
from test_server import serving

CELLS = ("gru", "lstm")


def export_cell(cell: str, tokenizer, root) -> tuple:
    """A two-layer model of the cell, exported from a checkpoint file: (folder, model)."""
    torch.manual_seed(2)
    model = RNNLM(ModelConfig(tokenizer.vocab_size, hidden_size=24, num_layers=2, cell=cell))
    with torch.no_grad():  # sharper distributions than a fresh model's, as a trained one has
        model.V.mul_(4)
    return export(save_checkpoint(root / "best.ckpt", model.eval(), tokenizer), root / "out"), model


@pytest.fixture(scope="module", params=CELLS)
def gated(request, char_export, tmp_path_factory):
    return export_cell(request.param, char_export.tokenizer, tmp_path_factory.mktemp(request.param))


def test_the_manifest_names_the_cell_and_each_state_tensor(gated):
    folder, model = gated
    spec = json.loads((folder / "manifest.json").read_text())
    names = ["hidden", "cell"] if model.config.cell == "lstm" else ["hidden"]
    assert spec["cell"] == model.config.cell
    assert spec["state"] == [{"input": f"past_{n}", "output": f"present_{n}", "dtype": "float32",
                              "shape": [2, "batch_size", 24]} for n in names]
    assert list(spec["model"]["parity"]["max_abs_diff"]) == ["logits", *names]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [x.name for x in session.get_inputs()] == ["input_ids", *(f"past_{n}" for n in names)]
    assert [x.name for x in session.get_outputs()] == ["logits", *(f"present_{n}" for n in names)]


@pytest.mark.parametrize("batch_size", [1, 7])
def test_onnxruntime_steps_equal_torch_steps_with_every_state_tensor_carried(gated, batch_size):
    folder, model = gated
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = [x.name for x in session.get_inputs()]
    rng = np.random.default_rng(batch_size)
    state = model.init_state(batch_size)  # torch's, (L, B, H) each
    state_ort = [s.numpy() for s in state]
    for _ in range(25):
        ids = rng.integers(0, model.vocab_size, batch_size)  # (B,)
        logits_ort, *state_ort = session.run(None, dict(zip(inputs, (ids, *state_ort), strict=True)))
        with torch.no_grad():
            logits, *state = model.step(torch.from_numpy(ids), *state)
        assert np.abs(logits_ort - logits.numpy()).max() <= 1e-5
        assert max(np.abs(a - b.numpy()).max() for a, b in zip(state_ort, state, strict=True)) <= 1e-5


def test_the_runtime_samples_a_gated_export_as_torch_does(gated, char_export):
    folder, model = gated
    tokenizer, generator = char_export.tokenizer, Generator.load(folder)
    state, out = model.init_state(1), []
    with torch.no_grad():
        for token in tokenizer.encode("ROMEO:"):
            logits, *state = model.step(torch.tensor([token]), *state)
        for _ in range(40):
            out.append(int(logits.argmax()))
            logits, *state = model.step(torch.tensor(out[-1:]), *state)
    assert generator.generate("ROMEO:", max_new_tokens=40, temperature=0) == tokenizer.decode(out)
    seeded = generator.generate("ROMEO:", max_new_tokens=40, seed=5)
    assert seeded == generator.generate("ROMEO:", max_new_tokens=40, seed=5)
    assert generator.generate_batch(["ROMEO:", "the"], max_new_tokens=40, seed=5)[0] == seeded


@pytest.mark.slow
def test_a_server_answers_a_seeded_request_for_an_lstm_as_generate_does(char_export, tmp_path):
    folder, _ = export_cell("lstm", char_export.tokenizer, tmp_path)  # two state tensors
    expected = Generator.load(folder).generate_batch(["First", "the"], max_new_tokens=30, seed=9)
    with serving(folder, tmp_path / "serve.log") as server:
        body = httpx.post(f"{server.url}/v1/completions", timeout=30,
                          json={"prompt": ["First", "the"], "max_tokens": 30, "seed": 9}).json()
    assert [choice["text"] for choice in body["choices"]] == expected and body["seed"] == 9
