"""`rnnlm export CKPT --out DIR`: a checkpoint's step function as an ONNX graph, checked, in a folder.

    input_ids (B,) int64, past_hidden (L, B, H) float32  ->  logits (B, V), present_hidden (L, B, H)

and for an LSTM also past_cell -> present_cell (L, B, H): one past_/present_ pair per name in the
model's state_names, each listed in the manifest's `state`.

The graph is RNNLM.step traced by torch.onnx's dynamo exporter (torch.export: no network, every
layer in one graph, U x a Gather and W h + U x + b one Gemm), batch_size its only dynamic axis.
Before the folder exists, the export checks itself (parity.py): the float32 graph in onnxruntime
against torch, an int8 graph's next-token distributions against torch's, onnx.checker, and a load
by the runtime. It is built in a temporary folder beside DIR and renamed into place, so DIR is a
whole export or left as it was. No tensor is ever written as external data: the runtime refuses
graphs that have some.
"""

import argparse
import json
import logging
import math
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from rnnlm.atomic import atomic_folder
from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM
from rnnlm.parity import RULES, float32_parity, int8_agreement
from rnnlm.runtime.generator import Generator
from rnnlm.runtime.manifest import (
    BATCH,
    FORMAT,
    LOGITS,
    MANIFEST_FILE,
    MODEL_FILE,
    QUANTIZATIONS,
    TOKENS,
    sha256_bytes,
)
from rnnlm.runtime.sampler import RULE, SamplingParams
from rnnlm.tokenizers import Tokenizer, save_vocabulary, start_token, tokenizer_from_bytes

OPSET = 18  # the dynamo exporter's lowest; read by onnxruntime 1.14 and later
CHECKPOINT_ADVICE = "give a .ckpt file written by `rnnlm fit` (e.g. runs/char/checkpoints/best.ckpt)"


class StepFunction(nn.Module):
    """RNNLM.step: input_ids and the past state in, logits and the present state out."""

    def __init__(self, model: RNNLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.step(input_ids, *past)  # logits (B, V), then the present state, (L, B, H) each


def state_io(model: RNNLM) -> list[tuple[str, str]]:
    """The graph's (input, output) name of each state tensor: past_hidden -> present_hidden, ..."""
    return [(f"past_{name}", f"present_{name}") for name in model.state_names]


def load_checkpoint(path: str | Path) -> tuple[RNNLM, Tokenizer, dict]:
    """The model (in eval mode), its tokenizer and its training facts from an `rnnlm fit` checkpoint."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise RnnlmError(f"checkpoint {path} {problem}; {CHECKPOINT_ADVICE}")
    try:  # weights_only: a checkpoint is tensors and plain data, never code to run
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        reason = type(e).__name__
        raise RnnlmError(f"{path} is not a checkpoint torch can read ({reason}); {CHECKPOINT_ADVICE}") from None
    keys = ("hyper_parameters", "state_dict", "rnnlm")
    if not isinstance(checkpoint, dict) or not all(k in checkpoint for k in keys):
        raise RnnlmError(f"{path} is not an rnnlm checkpoint (it lacks {', '.join(keys)}); {CHECKPOINT_ADVICE}")
    state = checkpoint["rnnlm"]
    try:
        model = RNNLM.from_checkpoint(checkpoint)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise RnnlmError(f"{path} does not hold a whole RNNLM ({e}); {CHECKPOINT_ADVICE}") from None
    tokenizer = tokenizer_from_bytes(state["tokenizer"]["type"], state["tokenizer"]["data"])
    val_bpc = state.get("val_bpc")
    facts = {
        "val_bpc": val_bpc if isinstance(val_bpc, float) and math.isfinite(val_bpc) else None,
        "steps": checkpoint.get("global_step"),
        "corpus": state.get("corpus"),
        "corpus_sha256": state.get("corpus_sha256"),
        "checkpoint": path.name,
    }
    return model.eval(), tokenizer, facts


@contextmanager
def _quiet():
    """Silence the exporter's and quantizer's chatter (torchvision absent, preprocessing advice):
    the graph they write is judged by the checks that follow, not by their warnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def to_onnx(model: RNNLM, path: Path) -> None:
    """Write model.step as an ONNX graph with batch_size the only dynamic axis."""
    batch, io = torch.export.Dim(BATCH), state_io(model)
    example = (torch.zeros(2, dtype=torch.long), *model.init_state(2))  # batch 2: a size-1 axis would be fixed
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            StepFunction(model).eval(), example, str(path), dynamo=True, opset_version=OPSET, external_data=False,
            input_names=[TOKENS, *(past for past, _ in io)], output_names=[LOGITS, *(present for _, present in io)],
            verbose=False, dynamic_shapes=({0: batch}, tuple({1: batch} for _ in io)),  # *past: one tuple
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights, activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, use_external_data_format=False)


def manifest(model: RNNLM, tokenizer: Tokenizer, graph: bytes, tokenizer_file: Path, quantization: str,
             checks: dict, training: dict, vocabulary: Path | None = None) -> dict:
    """manifest.json's fields (docs/manifest.md; runtime/manifest.py's SCHEMA checks them)."""
    L, H, V = model.num_layers, model.hidden_size, model.vocab_size
    return {
        "format": FORMAT,
        "sampler": RULE,
        "model": {"file": MODEL_FILE, "sha256": sha256_bytes(graph), "bytes": len(graph), "opset": OPSET,
                  "quantization": quantization, "parity": checks},
        "cell": f"rnn_{model.nonlinearity}" if model.config.cell == "rnn" else model.config.cell,
        "vocab_size": V, "hidden_size": H, "num_layers": L,
        "inputs": {TOKENS: {"name": TOKENS, "dtype": "int64", "shape": [BATCH]}},
        "outputs": {LOGITS: {"name": LOGITS, "dtype": "float32", "shape": [BATCH, V]}},
        "state": [{"input": past, "output": present, "dtype": "float32", "shape": [L, BATCH, H]}
                  for past, present in state_io(model)],
        "tokenizer": {"type": tokenizer.kind, "file": tokenizer_file.name,
                      "sha256": sha256_bytes(tokenizer_file.read_bytes()),
                      **({"vocabulary": {"file": vocabulary.name, "sha256": sha256_bytes(vocabulary.read_bytes())}}
                         if vocabulary else {})},
        "generation": {**generation_defaults(), "start_token": start_token(tokenizer)},
        "training": training,
    }


def generation_defaults() -> dict:
    """The runtime's own sampling defaults, written into the manifest for every runtime that reads it."""
    defaults = SamplingParams()
    return {key: getattr(defaults, key) for key in ("temperature", "top_k", "top_p", "max_new_tokens")}


def export(checkpoint: str | Path, out: str | Path, quantize: str | None = None) -> Path:
    """Write checkpoint's step function, tokenizer and manifest to out (replacing an earlier export there)."""
    _check_request(Path(out), quantize or "none")
    model, tokenizer, training = load_checkpoint(checkpoint)
    return write_export(model, tokenizer, out, quantize or "none", training)


def write_export(model: RNNLM, tokenizer: Tokenizer, out: str | Path, quantization: str = "none",
                 training: dict | None = None) -> Path:
    """Export model.step with tokenizer to out: built and checked in a temporary folder, then renamed."""
    import onnx

    out = Path(out)
    _check_request(out, quantization)
    with atomic_folder(out) as tmp:  # out is a whole export, the earlier one, or absent
        graph_path = tmp / MODEL_FILE
        to_onnx(model, graph_path)
        checks = float32_parity(model, graph_path.read_bytes())
        if quantization == "int8":
            float_path = graph_path.rename(tmp / "float32.onnx")
            quantize_int8(float_path, graph_path)
            float_path.unlink()
            checks = {**checks, "rule": RULES["int8"], "int8": int8_agreement(model, graph_path.read_bytes())}
        try:
            onnx.checker.check_model(str(graph_path), full_check=True)
        except onnx.checker.ValidationError as e:
            raise RnnlmError(f"onnx.checker rejects the exported graph ({e}); nothing was written") from None
        graph = graph_path.read_bytes()
        tokenizer_file = tokenizer.save(tmp)
        vocabulary = save_vocabulary(tokenizer, tmp)
        spec = manifest(model, tokenizer, graph, tokenizer_file, quantization, checks, training or {}, vocabulary)
        (tmp / MANIFEST_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        Generator.load(tmp)  # the runtime's own checks of the folder: what `rnnlm sample` will read
    return out


def _check_request(out: Path, quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise RnnlmError(f"unknown quantization {quantization!r}: use int8 or leave --quantize out")
    if out.exists() and not (out / MANIFEST_FILE).is_file():
        raise RnnlmError(f"{out} exists and is not an rnnlm export (no {MANIFEST_FILE}); "
                         "choose another --out or remove it")


def export_command(args: argparse.Namespace) -> None:
    out = export(args.checkpoint, args.out, args.quantize)
    spec = json.loads((out / MANIFEST_FILE).read_text())
    parity = spec["model"]["parity"]
    diff = parity["max_abs_diff"]
    int8 = "".join(f"; int8 vs torch on {name.replace('_', ' ')}: mean KL {m['kl_mean']:.2g} nats, top-1 agreement "
                   f"{m['top1_agreement']:.3f}" for name, m in parity.get("int8", {}).items() if name != "bounds")
    print(f"wrote {out}: {spec['model']['bytes'] / 1e6:.2f} MB {spec['cell']} L={spec['num_layers']} "
          f"H={spec['hidden_size']} V={spec['vocab_size']} ({spec['model']['quantization']}); float32 graph vs torch "
          f"max |diff| {', '.join(f'{name} {d:.2g}' for name, d in diff.items())}{int8}")
