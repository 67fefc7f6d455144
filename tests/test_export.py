"""`rnnlm export`: the ONNX step function against torch, the manifest, atomic writes, bad checkpoints,
int8, and the round trip train -> export -> sample -> eval through the real command."""

import copy
import json
import math
import shutil
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from conftest import run_rnnlm
from rnnlm import export as export_module
from rnnlm.errors import RnnlmError
from rnnlm.export import export, quantize_int8, to_onnx, write_export
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.parity import INT8_BOUNDS, int8_agreement
from rnnlm.runtime import Generator, load_manifest
from rnnlm.runtime.evaluate import bits_per_character
from rnnlm.runtime.manifest import sha256_bytes


def save_checkpoint(path, model: RNNLM, tokenizer, steps: int = 123, val_bpc: float = 2.5):
    """What `rnnlm fit` saves, as far as export reads it."""
    torch.save({
        "global_step": steps,
        "hyper_parameters": {**asdict(model.config), "lr": 2e-3},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "rnnlm": {"tokenizer": {"type": tokenizer.kind, "data": tokenizer.to_bytes()}, "corpus": "corpus.txt",
                  "corpus_sha256": "0" * 64, "val_bpc": val_bpc, "hidden": None},
    }, path)
    return path


@pytest.fixture(scope="module")
def relu_export(char_export, tmp_path_factory):
    """A one-layer relu model exported from a checkpoint file."""
    torch.manual_seed(1)
    model = RNNLM(ModelConfig(char_export.tokenizer.vocab_size, hidden_size=48, nonlinearity="relu")).eval()
    root = tmp_path_factory.mktemp("relu")
    checkpoint = save_checkpoint(root / "best.ckpt", model, char_export.tokenizer)
    return export(checkpoint, root / "relu"), model, checkpoint


# ----------------------------------------------------------------------------- the graph


def test_the_graph_has_the_contract_io_and_batch_size_is_its_only_dynamic_axis(char_export):
    assert {p.name for p in char_export.folder.iterdir()} == {"model.onnx", "manifest.json", "tokenizer.json"}
    graph = onnx.load(char_export.folder / "model.onnx").graph

    def io(values):  # (name, element type, shape) of each graph input or output
        types = [(v.name, v.type.tensor_type) for v in values]
        return [(name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]) for name, t in types]

    V, F32, I64 = char_export.tokenizer.vocab_size, onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert io(graph.input) == [("input_ids", I64, ["batch_size"]), ("past_hidden", F32, [2, "batch_size", 32])]
    assert io(graph.output) == [("logits", F32, ["batch_size", V]), ("present_hidden", F32, [2, "batch_size", 32])]


@pytest.mark.parametrize("which", ["tanh, 2 layers", "relu, 1 layer"])
def test_onnxruntime_steps_match_torch_steps_with_the_state_carried(char_export, relu_export, which):
    folder, model = (char_export.folder, char_export.model) if which.startswith("tanh") else relu_export[:2]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for B in (1, 3):
        h_ort = np.zeros((model.num_layers, B, model.hidden_size), np.float32)
        h_torch = torch.from_numpy(h_ort)
        for _ in range(30):
            ids = rng.integers(0, model.vocab_size, B)
            logits, h_ort = session.run(None, {"input_ids": ids, "past_hidden": h_ort})
            with torch.no_grad():
                want, h_torch = model.step(torch.from_numpy(ids), h_torch)
            assert np.abs(logits - want.numpy()).max() <= 1e-5
            assert np.abs(h_ort - h_torch.numpy()).max() <= 1e-5


def test_runtime_greedy_text_is_torch_greedy_text(char_export):
    model, tokenizer = char_export.model, char_export.tokenizer
    hidden, ids = model.init_hidden(1), tokenizer.encode("the ")
    with torch.no_grad():
        for token in ids:
            logits, hidden = model.step(torch.tensor([token]), hidden)
        out = []
        for _ in range(60):
            out.append(int(logits.argmax()))
            logits, hidden = model.step(torch.tensor(out[-1:]), hidden)
    greedy = Generator.load(char_export.folder).generate("the ", max_new_tokens=60, temperature=0)
    assert greedy == tokenizer.decode(out)


def test_eval_bits_per_character_is_torch_cross_entropy(char_export, small_corpus):
    text = small_corpus.read_text()[:3000]
    generator = Generator.load(char_export.folder)
    ids = torch.tensor(char_export.tokenizer.encode(text))
    inputs = torch.cat([torch.tensor([generator.start_token]), ids[:-1]])
    with torch.no_grad():
        logits, _, _ = char_export.model(inputs[None])
    nats = F.cross_entropy(logits[0], ids, reduction="sum").item()
    score = bits_per_character(generator, text)
    assert score.tokens == score.chars == 3000
    assert math.isclose(score.bpc, nats / math.log(2) / 3000, rel_tol=1e-5)


def test_eval_val_scores_the_split_that_training_holds_out(char_export, small_corpus, tmp_path):
    text = small_corpus.read_text()[:5000]
    (tmp_path / "corpus.txt").write_text(text)
    scored = run_rnnlm("eval", str(char_export.folder), "--text", str(tmp_path / "corpus.txt"), "--val")
    assert scored.returncode == 0, scored.stderr
    held_out = bits_per_character(Generator.load(char_export.folder), text[4500:])  # 90 % of 5,000 characters
    assert f"the validation split of {tmp_path / 'corpus.txt'}: {held_out.bpc:.4f} bits per character, " \
           f"{held_out.nats / held_out.tokens:.4f} nats per token (500 tokens, 500 characters)" in scored.stdout


# ----------------------------------------------------------------------------- the folder


def test_the_manifest_holds_what_a_runtime_needs(relu_export, char_export):
    folder, model, _ = relu_export
    spec = json.loads((folder / "manifest.json").read_text())
    assert spec["format"] == "rnnlm-step/2" and spec["cell"] == "rnn_relu" and spec["sampler"] == "gumbel-lowbias32/1"
    assert (spec["vocab_size"], spec["hidden_size"], spec["num_layers"]) == (model.vocab_size, 48, 1)
    assert spec["model"]["sha256"] == sha256_bytes((folder / "model.onnx").read_bytes())
    assert spec["model"]["quantization"] == "none" and spec["model"]["parity"]["batch_sizes"] == [1, 7]
    assert spec["model"]["parity"]["max_abs_diff"]["logits"] <= spec["model"]["parity"]["tolerance"]["logits"] == 1e-5
    assert spec["inputs"] == {"input_ids": {"name": "input_ids", "dtype": "int64", "shape": ["batch_size"]}}
    V = model.vocab_size
    assert spec["outputs"] == {"logits": {"name": "logits", "dtype": "float32", "shape": ["batch_size", V]}}
    assert spec["state"] == [{"input": "past_hidden", "output": "present_hidden", "dtype": "float32",
                              "shape": [1, "batch_size", 48]}]
    assert spec["tokenizer"]["type"] == "char" and (folder / spec["tokenizer"]["file"]).is_file()
    assert spec["generation"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 200,
                                  "start_token": char_export.tokenizer.encode("\n")[0]}
    assert spec["training"] == {"val_bpc": 2.5, "steps": 123, "corpus": "corpus.txt", "corpus_sha256": "0" * 64,
                                "checkpoint": "best.ckpt"}
    assert load_manifest(folder).state[0].input == "past_hidden"


def test_an_export_replaces_an_earlier_one_whole(relu_export, char_export, tmp_path):
    out = tmp_path / "model"
    export(relu_export[2], out)
    write_export(char_export.model, char_export.tokenizer, out)
    assert load_manifest(out).num_layers == 2 and Generator.load(out).generate("a", max_new_tokens=3)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left behind


def test_a_model_failing_the_parity_check_is_not_written(char_export, tmp_path, monkeypatch):
    old = tmp_path / "old"
    shutil.copytree(char_export.folder, old)
    before = (old / "manifest.json").read_text()
    monkeypatch.setattr("rnnlm.parity.FLOAT32_TOLERANCE", -1.0)
    for out in (tmp_path / "new", old):
        with pytest.raises(RnnlmError, match="disagrees with torch.*nothing was written"):
            write_export(char_export.model, char_export.tokenizer, out)
    assert (old / "manifest.json").read_text() == before and [p.name for p in tmp_path.iterdir()] == ["old"]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("folder", "is a folder"),
    (b"\x00garbage" * 100, "is not a checkpoint torch can read"),
    ("text", "is not a checkpoint torch can read"),
    ({"state_dict": {}}, "is not an rnnlm checkpoint"),
    ({"hyper_parameters": {"vocab_size": 5}, "state_dict": {}, "rnnlm": {}}, "does not hold a whole RNNLM"),
])
def test_a_path_that_is_not_a_checkpoint_is_refused(tmp_path, content, message):
    path = tmp_path / "model.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "folder":
        path.mkdir()
    elif content == "text":
        path.write_text("hello, I am not a checkpoint\n")
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(RnnlmError, match=message):
        export(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_that_is_not_an_export_is_left_alone(relu_export, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RnnlmError, match="exists and is not an rnnlm export"):
        export(relu_export[2], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_the_command_prints_one_line_errors(tmp_path):
    (tmp_path / "x.ckpt").write_text("not a checkpoint")
    result = run_rnnlm("export", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "is not a checkpoint torch can read" in result.stderr


# ----------------------------------------------------------------------------- int8 and the round trip


@pytest.mark.slow
def test_int8_export_is_smaller_and_scores_close_to_float32(char_export, small_corpus, tmp_path):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(char_export.tokenizer.vocab_size, hidden_size=256)).eval()
    checkpoint = save_checkpoint(tmp_path / "best.ckpt", model, char_export.tokenizer)
    full, int8 = export(checkpoint, tmp_path / "float32"), export(checkpoint, tmp_path / "int8", quantize="int8")
    spec = json.loads((int8 / "manifest.json").read_text())
    parity = spec["model"]["parity"]
    assert spec["model"]["quantization"] == "int8" and "mean KL(torch || int8) <= 0.01 nats" in parity["rule"]
    assert parity["max_abs_diff"]["logits"] <= 1e-5  # the float32 graph it was quantized from
    for measured in (parity["int8"]["random_states"], parity["int8"]["own_text"]):
        assert measured["kl_mean"] <= 0.01 and measured["top1_agreement"] >= 0.9 and measured["states"] >= 512
    assert (int8 / "model.onnx").stat().st_size < 0.4 * (full / "model.onnx").stat().st_size
    text = small_corpus.read_text()[:5000]
    bpc = [bits_per_character(Generator.load(folder), text).bpc for folder in (full, int8)]
    assert abs(bpc[1] - bpc[0]) < 0.02
    with pytest.raises(RnnlmError, match="unknown quantization 'int4'"):
        export(checkpoint, tmp_path / "int4", quantize="int4")


def trained_like(model: RNNLM) -> RNNLM:
    """Weights grown as training grows them: peaked next-token distributions (entropy ~1 nat, not log V)."""
    with torch.no_grad():
        model.U[0].mul_(16)
        for W in model.W:
            W.mul_(1.5)
        model.V.mul_(8)
    return model


def int8_graph(model: RNNLM, folder) -> bytes:
    to_onnx(model, folder / "float32.onnx")
    quantize_int8(folder / "float32.onnx", folder / "int8.onnx")
    return (folder / "int8.onnx").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("V, H, L, seed, trained", [(65, 32, 2, 0, False), (350, 256, 1, 1, False),
                                                    (65, 512, 1, 2, True), (350, 128, 2, 3, True)])
def test_int8_next_token_distributions_agree_with_torch_for_models_of_several_sizes(tmp_path, V, H, L, seed, trained):
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(V, hidden_size=H, num_layers=L)).eval()
    model = trained_like(model) if trained else model
    measured = int8_agreement(model, int8_graph(model, tmp_path))  # raises when a bound is broken
    for name in ("random_states", "own_text"):
        assert measured[name]["kl_mean"] < INT8_BOUNDS["kl_mean"] / 3  # well within the bound
        assert measured[name]["top1_agreement"] >= 0.95


def break_weights(model: RNNLM, how: str) -> RNNLM:
    broken = copy.deepcopy(model)
    with torch.no_grad():
        if how == "W zeroed":
            broken.W[0].zero_()
        elif how == "V scaled by 1.5":
            broken.V.mul_(1.5)
        elif how == "V scaled by 0.8":
            broken.V.mul_(0.8)
        elif how == "a row of V zeroed":
            broken.V[int(model.V.norm(dim=1).argmax())].zero_()
    return broken


@pytest.mark.slow
@pytest.mark.parametrize("how", ["W zeroed", "V scaled by 1.5", "V scaled by 0.8", "a row of V zeroed"])
def test_a_broken_int8_graph_fails_the_check(tmp_path, how):
    torch.manual_seed(4)
    model = trained_like(RNNLM(ModelConfig(65, hidden_size=128)).eval())
    with pytest.raises(RnnlmError, match="int8 graph's next-token distributions stray from torch's"):
        int8_agreement(model, int8_graph(break_weights(model, how), tmp_path))


@pytest.mark.slow
def test_an_int8_export_whose_graph_is_broken_is_not_written(char_export, tmp_path, monkeypatch):
    torch.manual_seed(5)
    model = trained_like(RNNLM(ModelConfig(char_export.tokenizer.vocab_size, hidden_size=64)).eval())
    to_onnx(break_weights(model, "W zeroed"), tmp_path / "broken.onnx")
    monkeypatch.setattr(export_module, "quantize_int8", lambda src, dst: quantize_int8(tmp_path / "broken.onnx", dst))
    with pytest.raises(RnnlmError, match="stray from torch's on random states.*nothing was written"):
        write_export(model, char_export.tokenizer, tmp_path / "out", "int8")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_train_export_sample_eval_through_the_command(small_corpus, tmp_path, tokenizer):
    subword = ["--data.tokenizer", "bpe", "--data.vocab_size", "350"] if tokenizer == "bpe" else []
    fit = run_rnnlm("fit", "--config", "configs/tiny.yaml", "--data.corpus", str(small_corpus), *subword,
                    "--data.data_dir", str(tmp_path / "data"), "--trainer.default_root_dir", str(tmp_path / "run"),
                    "--trainer.max_steps", "10", "--trainer.val_check_interval", "5",
                    "--trainer.limit_val_batches", "2")
    assert fit.returncode == 0, fit.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    exported = run_rnnlm("export", str(checkpoint), "--out", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr
    spec = json.loads((tmp_path / "export" / "manifest.json").read_text())
    saved = torch.load(checkpoint, weights_only=True)
    assert spec["tokenizer"]["type"] == tokenizer and spec["training"]["steps"] == saved["global_step"]
    assert spec["training"]["val_bpc"] == saved["rnnlm"]["val_bpc"]
    sample = run_rnnlm("sample", str(tmp_path / "export"), "--prompt", "First", "-n", "40", "--seed", "0")
    assert sample.returncode == 0, sample.stderr
    expected = Generator.load(tmp_path / "export").generate("First", max_new_tokens=40, seed=0)
    assert sample.stdout == f"First{expected}\n"
    scored = run_rnnlm("eval", str(tmp_path / "export"), "--text", str(small_corpus))
    assert scored.returncode == 0 and "bits per character" in scored.stdout, scored.stderr
