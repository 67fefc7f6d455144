"""manifest.json: what an exported folder holds, read and checked before anything is loaded.

An export is a folder with three files: model.onnx (one step of the recurrence), the tokenizer
file, and manifest.json, which names both with their sha256 and says everything else a runtime
needs (sizes, graph I/O names, generation defaults). A manifest is trusted only after its format
is known, every file it names lies inside its folder, and each file matches its sha256.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from rnnlm.errors import RnnlmError

FORMAT = "rnnlm-step/1"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
INPUTS = ("input_ids", "past_hidden")  # roles of the graph inputs; the manifest maps each to its graph name
OUTPUTS = ("logits", "present_hidden")
CELLS = ("rnn_tanh", "rnn_relu")
GENERATION = ("temperature", "top_k", "top_p", "max_new_tokens", "start_token")
EXPORT_ADVICE = "re-export it with `rnnlm export CKPT --out DIR`"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A checked manifest.json. `names` maps each I/O role (INPUTS, OUTPUTS) to its graph name."""

    folder: Path
    data: dict
    cell: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    names: dict
    tokenizer_type: str
    generation: dict

    def read_model(self) -> bytes:
        """model.onnx's bytes, verified against the manifest's sha256."""
        return self._read("model")

    def read_tokenizer(self) -> bytes:
        return self._read("tokenizer")

    def _read(self, key: str) -> bytes:
        entry = self.data[key]
        path = self.folder / entry["file"]
        data = path.read_bytes()
        if sha256_bytes(data) != entry["sha256"]:
            raise RnnlmError(
                f"{path} does not match the sha256 in its manifest (edited, truncated or replaced); {EXPORT_ADVICE}"
            )
        return data


def load_manifest(folder: str | Path) -> Manifest:
    """Read and check folder/manifest.json: format, fields, and that every named file lies inside
    the folder and exists. The sha256 of each file is checked when it is read."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise RnnlmError(f"no exported model at {folder}: make one with `rnnlm export CKPT --out {folder}`")
    if not path.is_file():
        raise RnnlmError(f"{folder} is not an rnnlm export: it has no {MANIFEST_FILE}; {EXPORT_ADVICE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RnnlmError(f"{path} is not valid JSON ({e}); {EXPORT_ADVICE}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise RnnlmError(
            f"{path} has format {found!r}, but this runtime reads {FORMAT!r}; "
            "use the rnnlm version that wrote it, or re-export the model with this one"
        )
    get = _Fields(path, data)
    for key in ("model", "tokenizer"):
        _inside(path, folder, key, get(f"{key}.file", str))
        get(f"{key}.sha256", str)
    cell = get("cell", str)
    if cell not in CELLS:
        raise RnnlmError(f"{path} names an unknown cell {cell!r} (this runtime knows {', '.join(CELLS)}); "
                         f"{EXPORT_ADVICE}")
    names = {role: get(f"{kind}.{role}.name", str) for kind, roles in (("inputs", INPUTS), ("outputs", OUTPUTS))
             for role in roles}
    generation = {key: get(f"generation.{key}", float if key in ("temperature", "top_p") else int)
                  for key in GENERATION}
    return Manifest(
        folder=folder,
        data=data,
        cell=cell,
        vocab_size=get("vocab_size", int),
        hidden_size=get("hidden_size", int),
        num_layers=get("num_layers", int),
        names=names,
        tokenizer_type=get("tokenizer.type", str),
        generation=generation,
    )


class _Fields:
    """Typed access to dotted fields of a manifest, each missing or mistyped one a clear error."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data

    def __call__(self, dotted: str, kind: type):
        value = self.data
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        valid = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not valid:
            raise RnnlmError(f"{self.path} lacks a valid {dotted} (a {kind.__name__}); {EXPORT_ADVICE}")
        return value


def _inside(manifest: Path, folder: Path, key: str, name: str) -> None:
    """The file a manifest names must lie inside its folder (no absolute paths, no '..', no links out)."""
    path = folder / name
    root = folder.resolve()
    if Path(name).is_absolute() or root not in path.resolve().parents:
        raise RnnlmError(
            f"{manifest} names {key}.file {name!r}, which lies outside {folder}; "
            f"a manifest may only name files inside its own folder: {EXPORT_ADVICE}"
        )
    if not path.is_file():
        raise RnnlmError(f"{manifest} names {key}.file {name!r}, but {path} does not exist; {EXPORT_ADVICE}")
