"""manifest.json and its folder: the schema, rnnlm-step/1 folders, and a corpus of doctored exports
(external data, links out of the folder, values the graph contradicts, files that do not parse),
each refused at load with one line by Generator.load and by `rnnlm sample`, `eval` and `serve`."""

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from conftest import ROOT, run_rnnlm
from rnnlm.errors import RnnlmError
from rnnlm.runtime import Generator, load_manifest
from rnnlm.runtime.manifest import SCHEMA, sha256_bytes

# ----------------------------------------------------------------------------- doctoring a copy


def edit_manifest(folder: Path, edit) -> None:
    spec = json.loads((folder / "manifest.json").read_text())
    edit(spec)
    (folder / "manifest.json").write_text(json.dumps(spec))


def replace_file(folder: Path, key: str, data: bytes) -> None:
    """Write new content into the file manifest[key] names, with the manifest's sha256 (and size) to match."""
    spec = json.loads((folder / "manifest.json").read_text())
    (folder / spec[key]["file"]).write_bytes(data)
    spec[key]["sha256"] = sha256_bytes(data)
    if key == "model":
        spec[key]["bytes"] = len(data)
    (folder / "manifest.json").write_text(json.dumps(spec))


def set_value(path: str, value):
    """An edit setting a dotted field of the manifest."""
    def edit(spec):
        *parents, last = path.split(".")
        for key in parents:
            spec = spec[key]
        spec[last] = value
    return lambda folder: edit_manifest(folder, edit)


def raw_manifest(old: str, new: str):
    """An edit of manifest.json's text, for what json.dumps will not write (1e999, NaN, 2**1024)."""
    def doctor(folder):
        text = json.dumps(json.loads((folder / "manifest.json").read_text()))
        assert old in text
        (folder / "manifest.json").write_text(text.replace(old, new, 1))
    return doctor


def graph_edit(edit):
    """An edit of model.onnx with onnx; the manifest's sha256 and size follow."""
    def doctor(folder):
        model = onnx.load(folder / "model.onnx")
        edit(model, folder)
        replace_file(folder, "model", model.SerializeToString())
    return doctor


def external(location):
    """Store the graph's largest initializer as external data at location (a function of the folder)."""
    def edit(model, folder):
        tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        (folder.parent / "secret.bin").write_bytes(tensor.raw_data)  # what the attack wants read
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location(folder)
    return graph_edit(edit)


def constant_outside(model, folder):
    """A Constant node whose value tensor lies in a file outside the folder."""
    value = numpy_helper.from_array(np.zeros(3, np.float32), "outside_value")
    value.ClearField("raw_data")
    value.data_location = onnx.TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    model.graph.node.append(helper.make_node("Constant", [], ["unused"], value=value))


def weights_nan(model, folder):
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    array = numpy_helper.to_array(tensor).copy()
    array[...] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def link(name: str, target) -> callable:
    """model.file becomes name, a symbolic link to target(folder)."""
    def doctor(folder):
        os.symlink(target(folder), folder / name)
        set_value("model.file", name)(folder)
    return doctor


def loop(folder):
    os.symlink("loop_b.onnx", folder / "loop_a.onnx")
    os.symlink("loop_a.onnx", folder / "loop_b.onnx")
    set_value("model.file", "loop_a.onnx")(folder)


def link_outside(folder):
    shutil.copy(folder / "model.onnx", folder.parent / "model_copy.onnx")
    link("outside.onnx", lambda f: f.parent / "model_copy.onnx")(folder)


def manifest_outside(folder):
    (folder / "manifest.json").rename(folder.parent / "manifest_elsewhere.json")
    os.symlink(folder.parent / "manifest_elsewhere.json", folder / "manifest.json")


def model_is(kind):
    def doctor(folder):
        (folder / "thing").mkdir() if kind == "folder" else os.mkfifo(folder / "thing")
        set_value("model.file", "thing")(folder)
    return doctor


def tokenizer_bytes(data: bytes):
    return lambda folder: replace_file(folder, "tokenizer", data)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def both(*doctors):
    def doctor(folder):
        for d in doctors:
            d(folder)
    return doctor


def shape_of_state(L, H):
    return set_value("state", [{"input": "past_hidden", "output": "present_hidden", "dtype": "float32",
                                "shape": [L, "batch_size", H]}])


FILE_NAME = "model.file must be a plain file name inside the folder"
GRAPH_DISAGREES = r"but its manifest says float32 \[.*\]"
# (id, doctor(folder), what the one-line error says)
DOCTORED = [
    # D5: the folder is a sandbox
    ("external data, ../ outside", external(lambda f: "../secret.bin"), "stores tensor .* as external data"),
    ("external data, absolute path", external(lambda f: str(f.parent / "secret.bin")), "as external data"),
    ("external data, inside the folder", external(lambda f: "weights.bin"), "as external data"),
    ("external data in a Constant node", graph_edit(constant_outside), "tensor 'outside_value' as external data"),
    ("model.file ../", set_value("model.file", "../char/model.onnx"), FILE_NAME),
    ("tokenizer.file absolute", set_value("tokenizer.file", "/etc/hostname"), "tokenizer.file must be a plain file"),
    ("model.file with NUL", set_value("model.file", "model\x00.onnx"), FILE_NAME),
    ("model.file of 300 characters", set_value("model.file", "m" * 300), FILE_NAME),
    ("model.file empty", set_value("model.file", ""), FILE_NAME),
    ("model.file a lone surrogate", set_value("model.file", "\ud800.onnx"), FILE_NAME),
    ("model.file a link out of the folder", link_outside, "a symbolic link that leads out of the folder"),
    ("model.file a link loop", loop, "a symbolic link that leads nowhere"),
    ("model.file a dangling link", link("gone.onnx", lambda f: "nowhere.onnx"), "a symbolic link that leads nowhere"),
    ("model.file a folder", model_is("folder"), "thing in .* is not a regular file"),
    ("model.file a fifo", model_is("fifo"), "thing in .* is not a regular file"),
    ("model.file missing", set_value("model.file", "missing.onnx"), "missing.onnx in .* does not exist"),
    ("manifest.json a link out", manifest_outside, "manifest.json in .* is a symbolic link that leads out"),
    # D6: values the graph or the request checks contradict
    ("hidden_size 256", set_value("hidden_size", 256), r"state\[0\]\.shape must be \[num_layers, batch_size, hidden"),
    ("hidden_size 256 with its state", both(set_value("hidden_size", 256), shape_of_state(2, 256)), GRAPH_DISAGREES),
    ("num_layers 0", set_value("num_layers", 0), r"num_layers must be in \[1, 256\], got 0"),
    ("num_layers 3 with its state", both(set_value("num_layers", 3), shape_of_state(3, 32)), GRAPH_DISAGREES),
    ("vocab_size 99", both(set_value("vocab_size", 99), set_value("outputs.logits.shape", ["batch_size", 99])),
     "tokens but the model 99"),
    ("logits shape", set_value("outputs.logits.shape", ["batch_size", 7]), r"outputs\.logits\.shape must be"),
    ("start_token 9999", set_value("generation.start_token", 9999), r"start_token must be in \[0, vocab_size\)"),
    ("start_token -1", set_value("generation.start_token", -1), r"start_token must be in \[0, vocab_size\), got -1"),
    ("max_new_tokens 10**6", set_value("generation.max_new_tokens", 10**6), "generation.max_new_tokens must be"),
    ("temperature -1", set_value("generation.temperature", -1), "generation.temperature must be a number >= 0"),
    ("top_p 2", set_value("generation.top_p", 2), r"generation.top_p must lie in \(0, 1\]"),
    ("top_k -1", set_value("generation.top_k", -1), "generation.top_k must be an integer >= 0"),
    ("temperature a string", set_value("generation.temperature", "hot"), r"valid generation.temperature \(a number"),
    ("temperature 1e999", raw_manifest('"temperature": 1.0', '"temperature": 1e999'), "valid generation.temperature"),
    ("temperature 2**1024", raw_manifest('"temperature": 1.0', f'"temperature": {2**1024}'),
     "valid generation.temperature .* an integer of about 308 digits"),
    ("temperature NaN", raw_manifest('"temperature": 1.0', '"temperature": NaN'), "NaN is not a JSON number"),
    ("an integer of 5000 digits", raw_manifest('"top_k": 0', '"top_k": ' + "9" * 5000), "is not valid JSON"),
    ("generation missing", lambda f: edit_manifest(f, lambda s: s.pop("generation")), "valid generation.temperature"),
    ("start_token missing", lambda f: edit_manifest(f, lambda s: s["generation"].pop("start_token")),
     r"lacks a valid generation\.start_token \(an integer\), it has nothing"),
    ("training not an object", set_value("training", 5), r"valid training \(an object\)"),
    ("cell lstm on a vanilla graph", set_value("cell", "lstm"), "state must be one entry per state tensor of the cell"),
    ("cell unknown", set_value("cell", "transformer"), "cell must be one of 'rnn_tanh', 'rnn_relu', 'gru', 'lstm'"),
    ("quantization int4", set_value("model.quantization", "int4"), "model.quantization must be one of"),
    ("sha256 not hex", set_value("model.sha256", "x" * 64), "model.sha256 must be 64 lowercase hex digits"),
    ("model.bytes too small", set_value("model.bytes", 10), "more than the 10 its manifest allows"),
    ("state empty", set_value("state", []), "state must be one entry per state tensor of the cell: 2 for lstm"),
    ("state input h0", set_value("state", [{"input": "h0", "output": "present_hidden", "dtype": "float32",
                                            "shape": [2, "batch_size", 32]}]), r"has inputs .* manifest names"),
    ("state shape with true for 1", both(set_value("num_layers", 1), shape_of_state(True, 32)),
     r"state\[0\]\.shape must be"),
    ("state input named twice", set_value("state", [{"input": "logits", "output": "present_hidden",
                                                     "dtype": "float32", "shape": [2, "batch_size", 32]}]),
     "names one graph input or output twice"),
    ("format missing", lambda f: edit_manifest(f, lambda s: s.pop("format")), "has format None"),
    ("format 3", set_value("format", "rnnlm-step/3"), "reads 'rnnlm-step/1' or 'rnnlm-step/2'"),
    ("sampler unknown", set_value("sampler", "numpy-pcg64/1"), "names sampler 'numpy-pcg64/1', but this runtime"),
    ("sampler missing", lambda f: edit_manifest(f, lambda s: s.pop("sampler")), r"valid sampler \(a string\)"),
    # the files
    ("model truncated", lambda f: (f / "model.onnx").write_bytes((f / "model.onnx").read_bytes()[:1000]),
     "model.onnx in .* does not match the sha256 in its manifest"),
    ("model byte flipped", lambda f: (f / "model.onnx").write_bytes(
        (b := (f / "model.onnx").read_bytes())[:100] + bytes([b[100] ^ 1]) + b[101:]), "does not match the sha256"),
    ("model not ONNX", lambda f: replace_file(f, "model", b"\x0b" * 100), "model.onnx in .* is not an ONNX graph"),
    ("model NaN weights", graph_edit(weights_nan), "yields non-finite logits at its first step"),
    ("manifest not JSON", lambda f: (f / "manifest.json").write_text("{format"), "manifest.json .* is not valid JSON"),
    ("manifest not UTF-8", lambda f: (f / "manifest.json").write_bytes(b'{"format": "\xff"}'), "is not UTF-8"),
    ("manifest a list", lambda f: (f / "manifest.json").write_text("[1, 2]"), "has format None"),
    ("manifest deeply nested", lambda f: (f / "manifest.json").write_bytes(nested(200_000)), "nested too deeply"),
    ("manifest nested in a field", raw_manifest('"training": {', f'"deep": {nested(900).decode()}, "training": {{'),
     "nested too deeply"),  # though the parser takes it and no field reads it
    ("manifest of 2 MB", lambda f: (f / "manifest.json").write_text(" " * (2 << 20)), "larger than 1048576 bytes"),
    ("tokenizer not JSON", tokenizer_bytes(b"chars: abc"), "tokenizer.json in .* is not valid JSON"),
    ("tokenizer a list", tokenizer_bytes(b'["a", "b"]'), "is not a char tokenizer"),
    ("tokenizer not UTF-8", tokenizer_bytes(b'{"type": "char", "chars": "\xff\xfe"}'), "tokenizer.json .* not UTF-8"),
    ("tokenizer deeply nested", tokenizer_bytes(nested(100_000)), "nested too deeply"),
    ("tokenizer chars twice", tokenizer_bytes(b'{"type": "char", "chars": "aab"}'), "lists a character twice"),
    ("tokenizer no chars", tokenizer_bytes(b'{"type": "char", "chars": ""}'), "needs at least one character"),
    ("tokenizer type bpe on a char file", set_value("tokenizer.type", "bpe"), "is not a sentencepiece model"),
    ("vocabulary file outside", set_value("tokenizer.vocabulary", {"file": "../vocab.json", "sha256": "0" * 64}),
     "tokenizer.vocabulary.file must be a plain file name"),
    ("vocabulary file missing", set_value("tokenizer.vocabulary", {"file": "vocab.json", "sha256": "0" * 64}),
     "vocab.json in .* does not exist"),
    ("vocabulary file edited", both(set_value("tokenizer.vocabulary", {"file": "vocab.json", "sha256": "0" * 64}),
                                    lambda f: (f / "vocab.json").write_text("{}")), "vocab.json in .* does not match"),
    ("tokenizer type word", set_value("tokenizer.type", "word"), "tokenizer.type must be one of 'char', 'bpe'"),
]
REFUSED = [pytest.param(doctor, message, id=name) for name, doctor, message in DOCTORED]


def doctored(char_export, tmp_path: Path, doctor) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(char_export.folder, folder)
    doctor(folder)
    return folder


def refusal(folder: Path) -> str:
    with pytest.raises(RnnlmError) as caught:
        Generator.load(folder)
    return str(caught.value)


@pytest.mark.parametrize("doctor, message", REFUSED)
def test_a_doctored_folder_is_refused_at_load_with_one_line(char_export, tmp_path, doctor, message):
    folder = doctored(char_export, tmp_path, doctor)
    error = refusal(folder)
    assert re.search(message, error), error
    assert "\n" not in error and error.isascii() and len(error) < 600
    assert "secret" not in error and "/etc" not in error and "model_copy" not in error  # nothing outside is named
    assert "manifest_elsewhere" not in error


def test_a_folder_without_manifest_is_not_an_export(tmp_path):
    with pytest.raises(RnnlmError, match="is not an rnnlm export: it has no manifest.json"):
        Generator.load(tmp_path)
    with pytest.raises(RnnlmError, match="no exported model at"):
        Generator.load(tmp_path / "absent")


# ----------------------------------------------------------------------------- the commands


def refused_by_the_commands(folder: Path, message: str, port: int) -> None:
    """sample, eval and serve each exit 2 with the one line of Generator.load; serve before it binds a port."""
    text = folder.parent / "text.txt"
    text.write_text("the king")
    commands = [("sample", str(folder), "-n", "5"), ("eval", str(folder), "--text", str(text)),
                ("serve", str(folder), "--port", str(port))]
    for command in commands:
        result = run_rnnlm(*command, timeout=60)  # a server that had started would run until the timeout
        assert result.returncode == 2, (command[0], result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (command[0], result.stderr)
        assert re.search(message, result.stderr), (command[0], result.stderr)
        assert result.stdout == ""


@pytest.mark.parametrize("row", ["external data, ../ outside", "start_token 9999", "tokenizer type bpe on a char file"])
def test_the_commands_refuse_a_doctored_folder_before_serving(char_export, tmp_path, row, unused_port):
    [(doctor, message)] = [(d, m) for name, d, m in DOCTORED if name == row]
    refused_by_the_commands(doctored(char_export, tmp_path, doctor), message, unused_port)


@pytest.mark.slow
def test_the_commands_refuse_every_doctored_folder(char_export, tmp_path, unused_port):
    rows = [(i, doctor, message) for i, (name, doctor, message) in enumerate(DOCTORED)]
    folders = {i: doctored(char_export, tmp_path / str(i), doctor) for i, doctor, _ in rows}
    with ThreadPoolExecutor(2) as pool:  # two commands at a time: one per core
        list(pool.map(lambda row: refused_by_the_commands(folders[row[0]], row[2], unused_port), rows))


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- external data is never read


def test_an_external_data_graph_never_opens_the_outside_file(char_export, tmp_path, monkeypatch):
    """The outside file is a FIFO with no writer: opening it to read would block, so a command that
    returns at once never opened it. The location is tried both relative to the folder and relative to
    the working directory (where onnxruntime resolves a graph given as bytes)."""
    for location in ("../secret.bin", "secret.bin"):
        folder = doctored(char_export, tmp_path / location.replace("/", "_"), external(lambda f, at=location: at))
        (folder.parent / "secret.bin").unlink()
        os.mkfifo(folder.parent / "secret.bin")
        result = run_rnnlm("sample", str(folder), "-n", "5", cwd=folder.parent, timeout=60)
        assert result.returncode == 2 and "as external data" in result.stderr, result.stderr
        with monkeypatch.context() as m, pytest.raises(RnnlmError, match="as external data"):
            m.setattr(ort, "InferenceSession", lambda *a, **k: pytest.fail("onnxruntime saw the graph"))
            Generator.load(folder)


def test_the_attack_is_real_without_the_check(char_export, tmp_path, monkeypatch):
    """What the check prevents: onnxruntime given the doctored graph's bytes from the folder where the
    file lies reads it, and the model's logits follow the outside file."""
    folder = doctored(char_export, tmp_path, external(lambda f: "secret.bin"))
    secret = folder.parent / "secret.bin"
    graph = (folder / "model.onnx").read_bytes()
    feed = {"input_ids": np.zeros(1, np.int64), "past_hidden": np.ones((2, 1, 32), np.float32)}
    monkeypatch.chdir(folder.parent)
    before = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    secret.write_bytes(bytes(len(secret.read_bytes())))  # all zeros
    after = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert not np.array_equal(before, after)


# ----------------------------------------------------------------------------- formats and the schema


def as_format_1(folder: Path) -> None:
    """Rewrite a /2 manifest in the shape rnnlm-step/1 had: no sampler, no state list, the hidden
    state among inputs and outputs."""
    def edit(spec):
        [state] = spec.pop("state")
        del spec["sampler"]
        spec["format"] = "rnnlm-step/1"
        io = {"dtype": state["dtype"], "shape": state["shape"]}
        spec["inputs"]["past_hidden"] = {"name": state["input"], **io}
        spec["outputs"]["present_hidden"] = {"name": state["output"], **io}
    edit_manifest(folder, edit)


def test_a_format_1_folder_loads_and_samples_as_format_2(char_export, tmp_path):
    folder = doctored(char_export, tmp_path, as_format_1)
    old, new = Generator.load(folder), Generator.load(char_export.folder)
    assert old.manifest.format == "rnnlm-step/1" and new.manifest.format == "rnnlm-step/2"
    assert old.manifest.sampler == new.manifest.sampler == "gumbel-lowbias32/1"
    assert old.manifest.state == new.manifest.state
    assert old.manifest.state[0].batched(3) == (2, 3, 32) and old.manifest.state[0].row_shape == (2, 32)
    assert old.generate("the ", max_new_tokens=30, seed=4) == new.generate("the ", max_new_tokens=30, seed=4)
    result = run_rnnlm("sample", str(folder), "--prompt", "the ", "-n", "30", "--seed", "4")
    assert result.returncode == 0 and result.stdout == "the " + new.generate("the ", max_new_tokens=30, seed=4) + "\n"


def test_a_format_1_folder_without_its_hidden_state_is_refused(char_export, tmp_path):
    folder = doctored(char_export, tmp_path, as_format_1)
    edit_manifest(folder, lambda spec: spec["inputs"].pop("past_hidden"))
    assert re.search(r"lacks a valid state\[0\]\.input", refusal(folder))


def test_the_manifest_defaults_stay_within_a_generators_cap(char_export):
    assert Generator.load(char_export.folder, max_new_tokens_cap=5).defaults.max_new_tokens == 5
    assert Generator.load(char_export.folder).defaults.max_new_tokens == 200


def test_every_schema_field_is_documented():
    docs = (ROOT / "docs" / "manifest.md").read_text()
    missing = [field.path for field in SCHEMA if f"`{field.path}`" not in docs]
    assert not missing


def test_the_exported_manifest_is_format_2_and_passes_its_schema(char_export):
    manifest = load_manifest(char_export.folder)
    assert manifest.format == manifest.data["format"] == "rnnlm-step/2"
    assert [(s.input, s.output, s.dtype, s.shape) for s in manifest.state] == [
        ("past_hidden", "present_hidden", "float32", (2, "batch_size", 32))]
    assert manifest.names == {"input_ids": "input_ids", "logits": "logits"}
