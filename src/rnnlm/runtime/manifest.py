"""manifest.json: what an exported folder holds, read and checked before anything is loaded.

An export is a folder with three files: model.onnx (one step of the recurrence), the tokenizer
file, and manifest.json, which names both with their sha256 and says everything else a runtime
needs: sizes, the graph's I/O names, the recurrent state, the sampling rule, generation defaults.
docs/manifest.md describes every field. SCHEMA below is the one statement of each field's type and
range; `load_manifest` checks a manifest against it, so nothing read from a folder is trusted
before its type and range are known, every file it names lies inside the folder, and each file
matches its sha256. The graph's own I/O shapes are compared with the manifest when onnxruntime
opens it (session.py).

Format rnnlm-step/2 (written by `rnnlm export`) names the sampling rule and lists the state
tensors. rnnlm-step/1 folders keep loading: their graph and tokenizer are the same, so they are
read as /2 with the rule RULE and one state tensor, past_hidden -> present_hidden.
"""

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rnnlm.errors import RnnlmError
from rnnlm.runtime.onnx_wire import external_tensor
from rnnlm.runtime.sampler import RULE, SamplingParams
from rnnlm.tokenizers import TOKENIZERS, CharTokenizer, Tokenizer, tokenizer_from_bytes

FORMAT = "rnnlm-step/2"  # what `rnnlm export` writes
FORMATS = ("rnnlm-step/1", FORMAT)  # what this runtime reads
SAMPLERS = (RULE,)  # sampling rules this runtime implements (sampler.py)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
BATCH = "batch_size"  # the graph's one dynamic axis, as shapes name it
TOKENS, LOGITS = "input_ids", "logits"  # the step function's token input and logits output
HIDDEN = ("past_hidden", "present_hidden")  # the state every cell carries: h(t-1) in, h(t) out
INPUTS, OUTPUTS = (TOKENS, HIDDEN[0]), (LOGITS, HIDDEN[1])  # the graph I/O of a vanilla RNN's export
CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")  # the vanilla cell with its f, and the gated ones
QUANTIZATIONS = ("none", "int8")
MAX_NEW_TOKENS_CAP = 10_000  # the most tokens a default (and, unless a Generator lowers it, a request) may ask
MAX_MANIFEST_BYTES = 1 << 20
MAX_TOKENIZER_BYTES = 1 << 26
MAX_JSON_DEPTH = 16  # objects and lists inside each other; an export's manifest has 5 levels
EXPORT_ADVICE = "re-export it with `rnnlm export CKPT --out DIR`"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Rule:
    """What a field's value must be beyond its type: `holds(value, manifest)`, `says` it in words."""

    holds: Callable[[object, dict], bool]
    says: str
    shows_value: bool = True  # False where the value may be a path outside the folder


def one_of(*values: str) -> Rule:
    return Rule(lambda v, m: v in values, "one of " + ", ".join(map(repr, values)))


def between(low: int | float, high: int | float) -> Rule:
    return Rule(lambda v, m: low <= v <= high, f"in [{low}, {high}]")


def below(field: str) -> Rule:
    return Rule(lambda v, m: 0 <= v < m[field], f"in [0, {field})")


def matches(pattern: str, says: str) -> Rule:
    return Rule(lambda v, m: re.fullmatch(pattern, v, re.ASCII) is not None, says)


def shape(*dims: str) -> Rule:
    """A shape whose dims are BATCH and the values of the named integer fields, in this order."""
    def holds(v: list, m: dict) -> bool:
        want = [d if d == BATCH else m[d] for d in dims]
        return v == want and all(type(a) is type(b) for a, b in zip(v, want, strict=True))  # true is not 1
    return Rule(holds, "[" + ", ".join(dims) + "]")


def _plain_file_name(name: str, m: dict) -> bool:
    """A name of a file directly inside the folder: no separator, no '.' or '..', no control
    character (NUL included), at most 255 bytes of UTF-8."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return 0 < size <= 255 and name not in (".", "..") and not re.search(r"[/\\\x00-\x1f\x7f]", name)


FILE_NAME = Rule(_plain_file_name, "a plain file name inside the folder (no '/', '..' or NUL; at most 255 bytes)",
                 shows_value=False)
GRAPH_NAME = matches(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}", "a graph I/O name (letters, digits, _ . : -)")
SHA256 = matches(r"[0-9a-f]{64}", "64 lowercase hex digits")
AS_A_REQUEST = Rule(lambda v, m: True, "as a request's (SamplingParams.check)")


@dataclass(frozen=True)
class Field:
    """One field of manifest.json: its dotted path ("state[]." reaches into every entry of the
    state list), its JSON type (float: any finite number) and the rule its value obeys."""

    path: str
    type: type
    rule: Rule | None = None
    optional: bool = False


# Rows that compare with another field come after it.
SCHEMA = (
    Field("format", str, one_of(*FORMATS)),
    Field("sampler", str, one_of(*SAMPLERS)),
    Field("model.file", str, FILE_NAME),
    Field("model.sha256", str, SHA256),
    Field("model.bytes", int, between(1, 1 << 40)),
    Field("model.opset", int, between(7, 1000)),
    Field("model.quantization", str, one_of(*QUANTIZATIONS)),
    Field("model.parity", dict, optional=True),
    Field("cell", str, one_of(*CELLS)),
    Field("vocab_size", int, between(1, 1 << 24)),
    Field("hidden_size", int, between(1, 1 << 16)),
    Field("num_layers", int, between(1, 256)),
    Field("inputs.input_ids.name", str, GRAPH_NAME),
    Field("inputs.input_ids.dtype", str, one_of("int64")),
    Field("inputs.input_ids.shape", list, shape(BATCH)),
    Field("outputs.logits.name", str, GRAPH_NAME),
    Field("outputs.logits.dtype", str, one_of("float32")),
    Field("outputs.logits.shape", list, shape(BATCH, "vocab_size")),
    Field("state", list, Rule(lambda v, m: len(v) == (2 if m.get("cell") == "lstm" else 1),
                              "one entry per state tensor of the cell: 2 for lstm (hidden, cell), else 1")),
    Field("state[].input", str, GRAPH_NAME),
    Field("state[].output", str, GRAPH_NAME),
    Field("state[].dtype", str, one_of("float32")),
    Field("state[].shape", list, shape("num_layers", BATCH, "hidden_size")),
    Field("tokenizer.type", str, one_of(*TOKENIZERS)),
    Field("tokenizer.file", str, FILE_NAME),
    Field("tokenizer.sha256", str, SHA256),
    Field("tokenizer.vocabulary.file", str, FILE_NAME, optional=True),  # sentencepiece's pieces as JSON, for serve/js
    Field("tokenizer.vocabulary.sha256", str, SHA256, optional=True),
    Field("generation.temperature", float, AS_A_REQUEST),
    Field("generation.top_k", int, AS_A_REQUEST),
    Field("generation.top_p", float, AS_A_REQUEST),
    Field("generation.max_new_tokens", int, AS_A_REQUEST),
    Field("generation.start_token", int, below("vocab_size")),
    Field("training", dict, optional=True),
)


TYPE_NAMES = {float: "a number", int: "an integer", str: "a string", dict: "an object", list: "a list"}


def _typed(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is float:  # a JSON number that is a float without loss: finite, and no 4,000-digit integer
        return isinstance(value, float) and math.isfinite(value) or isinstance(value, int) and abs(value) <= 2**53
    if kind is int:
        return isinstance(value, int) and abs(value) <= 2**63
    return isinstance(value, kind)


def _show(value: object) -> str:
    """A value for an error message: short, ASCII, and never a deep repr."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _values(data: dict, path: str) -> list[tuple[str, object]]:
    """(name, value) of every place a schema path reaches; a missing value is None."""
    head, _, rest = path.partition("[].")
    value = data
    for key in head.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if not rest:
        return [(head, value)]
    return [(f"{head}[{i}].{rest}", entry.get(rest) if isinstance(entry, dict) else None)
            for i, entry in enumerate(value)]


def check_schema(data: dict, where: str) -> None:
    """Raise RnnlmError for the first field of SCHEMA that is missing, mistyped or out of range."""
    for field in SCHEMA:
        for name, value in _values(data, field.path):
            if value is None and field.optional:
                continue
            if not _typed(value, field.type):
                got = "nothing" if value is None else _show(value)
                raise RnnlmError(f"{where} lacks a valid {name} ({TYPE_NAMES[field.type]}), it has {got}; "
                                 f"{EXPORT_ADVICE}")
            if field.rule is not None and not field.rule.holds(value, data):
                got = f", got {_show(value)}" if field.rule.shows_value else ""
                raise RnnlmError(f"{where}: {name} must be {field.rule.says}{got}; {EXPORT_ADVICE}")


# ----------------------------------------------------------------------------- the checked manifest


@dataclass(frozen=True)
class StateTensor:
    """One tensor of the recurrent state: fed to the graph as `input`, returned as `output`, the
    next step's input. shape holds BATCH once (today [num_layers, BATCH, hidden_size])."""

    input: str
    output: str
    dtype: str
    shape: tuple

    @property
    def batch_axis(self) -> int:
        return self.shape.index(BATCH)

    def batched(self, batch_size: int) -> tuple[int, ...]:
        """The shape for batch_size sequences."""
        return tuple(batch_size if d == BATCH else d for d in self.shape)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """One sequence's share: the shape without its batch axis, e.g. (L, H)."""
        return tuple(d for d in self.shape if d != BATCH)


@dataclass(frozen=True)
class Manifest:
    """A checked manifest.json. `names` maps the roles TOKENS and LOGITS to their graph names;
    `state` lists the recurrent state tensors; `data` is the manifest as read (a /1 one in /2's shape)."""

    folder: Path
    data: dict
    format: str
    sampler: str
    cell: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    names: dict
    state: tuple[StateTensor, ...]
    tokenizer_type: str
    generation: dict

    def read_model(self) -> bytes:
        """model.onnx's bytes, verified against the manifest's size and sha256, and refused if any
        tensor lies outside them (external data would make onnxruntime read another file)."""
        data = self._read("model", self.data["model"]["bytes"])
        try:
            outside = external_tensor(data)
        except ValueError as e:
            raise RnnlmError(f"{self._name('model')} is not an ONNX graph ({e}); {EXPORT_ADVICE}") from None
        if outside is not None:
            raise RnnlmError(f"{self._name('model')} stores tensor {_show(outside)} as external data, which could "
                             f"read a file outside its folder; rnnlm graphs hold every tensor: {EXPORT_ADVICE}")
        return data

    def read_tokenizer(self) -> bytes:
        return self._read("tokenizer", MAX_TOKENIZER_BYTES)

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer file parsed as its declared type, with the model's vocabulary size. A
        vocabulary file (for runtimes without sentencepiece) is checked as well, though not read here."""
        data, kind, where = self.read_tokenizer(), self.tokenizer_type, self._name("tokenizer")
        if "vocabulary" in self.data["tokenizer"]:
            self._read("tokenizer.vocabulary", MAX_TOKENIZER_BYTES)
        if kind == CharTokenizer.kind and not isinstance(_parse_json(data, where), dict):
            raise RnnlmError(f"{where} is not a char tokenizer (a JSON object); {EXPORT_ADVICE}")
        try:
            tokenizer = tokenizer_from_bytes(kind, data)
        except RnnlmError as e:
            raise RnnlmError(f"{where}: {e}; {EXPORT_ADVICE}") from None
        except RuntimeError:  # sentencepiece's parse error
            raise RnnlmError(f"{where} is not a sentencepiece model, but tokenizer.type says {kind!r}; "
                             f"{EXPORT_ADVICE}") from None
        if tokenizer.kind != kind:
            raise RnnlmError(f"{where} holds a {tokenizer.kind} model, but tokenizer.type says {kind!r}; "
                             f"{EXPORT_ADVICE}")
        if kind == CharTokenizer.kind and len(set(tokenizer.chars)) != len(tokenizer.chars):
            raise RnnlmError(f"{where} lists a character twice; {EXPORT_ADVICE}")
        if tokenizer.vocab_size != self.vocab_size:
            raise RnnlmError(f"{where} has {tokenizer.vocab_size} tokens but the model {self.vocab_size}; "
                             f"{EXPORT_ADVICE}")
        return tokenizer

    def _entry(self, key: str) -> dict:
        """The {file, sha256} object at a dotted key: model, tokenizer, tokenizer.vocabulary."""
        entry = self.data
        for part in key.split("."):
            entry = entry[part]
        return entry

    def _name(self, key: str) -> str:
        """A file of the folder as errors name it: its name, and the folder as the user gave it."""
        return f"{self._entry(key)['file']} in {self.folder}"

    def _read(self, key: str, max_bytes: int) -> bytes:
        entry = self._entry(key)
        path, where = _inside(self.folder, entry["file"], f"{key}.file")
        size = path.stat().st_size
        if size > max_bytes:
            raise RnnlmError(f"{where} has {size} bytes, more than the {max_bytes} its manifest allows; "
                             f"{EXPORT_ADVICE}")
        data = path.read_bytes()
        if sha256_bytes(data) != entry["sha256"]:
            raise RnnlmError(
                f"{where} does not match the sha256 in its manifest (edited, truncated or replaced); {EXPORT_ADVICE}"
            )
        return data


def load_manifest(folder: str | Path) -> Manifest:
    """Read folder/manifest.json and check it against SCHEMA, the request checks of sampler.py,
    and the folder: every file it names is a regular file inside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RnnlmError(f"no exported model at {folder}: make one with `rnnlm export CKPT --out {folder}`")
    if not (folder / MANIFEST_FILE).exists() and not (folder / MANIFEST_FILE).is_symlink():
        raise RnnlmError(f"{folder} is not an rnnlm export: it has no {MANIFEST_FILE}; {EXPORT_ADVICE}")
    path, where = _inside(folder, MANIFEST_FILE, MANIFEST_FILE)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise RnnlmError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes; {EXPORT_ADVICE}")
    data = _parse_json(path.read_bytes(), where)
    found = data.get("format") if isinstance(data, dict) else None
    if found not in FORMATS:
        raise RnnlmError(
            f"{where} has format {_show(found)}, but this runtime reads {' or '.join(map(repr, FORMATS))}; "
            "use the rnnlm version that wrote it, or re-export the model with this one"
        )
    if found == "rnnlm-step/1":
        data = _as_format_2(data)
    if data.get("sampler") not in SAMPLERS and isinstance(data.get("sampler"), str):
        raise RnnlmError(f"{where} names sampler {_show(data['sampler'])}, but this runtime samples by "
                         f"{' or '.join(map(repr, SAMPLERS))}; use the rnnlm version that wrote it")
    check_schema(data, where)
    g = data["generation"]
    try:
        SamplingParams(g["temperature"], g["top_k"], g["top_p"], g["max_new_tokens"]).check(MAX_NEW_TOKENS_CAP)
    except RnnlmError as e:
        raise RnnlmError(f"{where}: generation.{e}; {EXPORT_ADVICE}") from None
    state = tuple(StateTensor(s["input"], s["output"], s["dtype"], tuple(s["shape"])) for s in data["state"])
    names = {TOKENS: data["inputs"][TOKENS]["name"], LOGITS: data["outputs"][LOGITS]["name"]}
    io = [*names.values(), *(n for s in state for n in (s.input, s.output))]
    if len(set(io)) < len(io):
        raise RnnlmError(f"{where} names one graph input or output twice ({', '.join(io)}); {EXPORT_ADVICE}")
    return Manifest(
        folder=folder, data=data, format=found, sampler=data["sampler"], cell=data["cell"],
        vocab_size=data["vocab_size"], hidden_size=data["hidden_size"], num_layers=data["num_layers"], names=names,
        state=state, tokenizer_type=data["tokenizer"]["type"], generation=dict(g),
    )


def _as_format_2(data: dict) -> dict:
    """An rnnlm-step/1 manifest in /2's shape: sampled by RULE, and its one state tensor taken from
    inputs.past_hidden and outputs.present_hidden (/1 names them beside input_ids and logits)."""
    inputs, outputs = data.get("inputs"), data.get("outputs")
    inputs, outputs = (x if isinstance(x, dict) else {} for x in (inputs, outputs))
    past, present = (x if isinstance(x, dict) else {} for x in (inputs.get(HIDDEN[0]), outputs.get(HIDDEN[1])))
    state = {"input": past.get("name"), "output": present.get("name"), "dtype": past.get("dtype"),
             "shape": past.get("shape")}
    return {**data, "sampler": RULE, "state": [state],
            "inputs": {k: v for k, v in inputs.items() if k != HIDDEN[0]},
            "outputs": {k: v for k, v in outputs.items() if k != HIDDEN[1]}}


def _parse_json(data: bytes, where: str) -> object:
    """JSON from bytes, every failure one line: not UTF-8, not JSON, NaN or Infinity (not JSON),
    an integer too long to convert, nesting deeper than MAX_JSON_DEPTH."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not a JSON number")

    too_deep = f"{where} is nested too deeply (more than {MAX_JSON_DEPTH} levels); {EXPORT_ADVICE}"
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError as e:
        raise RnnlmError(f"{where} is not UTF-8 (byte {e.start}); {EXPORT_ADVICE}") from None
    except RecursionError:
        raise RnnlmError(too_deep) from None
    except ValueError as e:  # JSONDecodeError, NaN, an integer past Python's digit limit
        reason = str(e).splitlines()[0][:120]
        raise RnnlmError(f"{where} is not valid JSON ({reason}); {EXPORT_ADVICE}") from None
    level = [value]
    for _ in range(MAX_JSON_DEPTH):  # breadth first, one level at a time: no recursion
        level = [x for v in level for x in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())]
    if level:
        raise RnnlmError(too_deep)
    return value


def _inside(folder: Path, name: str, field: str) -> tuple[Path, str]:
    """folder/name and its name for errors, if it is a regular file inside the folder once links
    are followed. A link out of it, a loop, a missing file or a folder is refused by its name in the
    folder (field: the manifest field that names it); an error never shows where a link leads."""
    path, where = folder / name, f"{name} in {folder}"
    named = f" (named by {field})" if field != name else ""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a dangling link, a loop (RuntimeError before Python 3.13)
        problem = "is a symbolic link that leads nowhere (a loop, or a missing target)" if path.is_symlink() \
            else "does not exist"
        raise RnnlmError(f"{where}{named} {problem}; {EXPORT_ADVICE}") from None
    if folder.resolve() not in target.parents:
        raise RnnlmError(f"{where}{named} is a symbolic link that leads out of the folder; an export may only "
                         f"use files inside its own folder: {EXPORT_ADVICE}")
    if not target.is_file():
        raise RnnlmError(f"{where}{named} is not a regular file; {EXPORT_ADVICE}")
    return target, where
