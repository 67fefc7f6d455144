"""What serve/js's tests compare with: small exports and the Python runtime's answers, as JSON.

    python tests/js_fixture.py OUT

writes OUT/char and OUT/bpe (random two-layer models, H=32, exported by rnnlm.export with
tokenizers trained on the tests' corpus), OUT/external (the char export doctored to read its
largest weight from OUT/secret.bin, outside the folder, as ONNX external data),
OUT/unigram.vocab.json (a unigram vocabulary), and
OUT/expected.json: for each case, the request and the text the Python Generator writes for it;
for each tokenizer, texts with the ids Python encodes them to and id lists with their decoded text;
and the manifest's schema (each field's path, type and rule), which serve/js must mirror.
tests/test_js.py runs it, then `node --test serve/js/test/` with RNNLM_JS_FIXTURE=OUT.
"""

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "tinyshakespeare-150k.txt"
TEXTS = [  # prompts and texts to tokenize: ASCII, spaces, newlines, non-ASCII, astral characters
    "ROMEO:\nWhat light through yonder window breaks?", "  two  spaces, a tab\tand\n\nnewlines ",
    "café naïve — “quotes” «guillemets»", "日本語のテキスト", "emoji 😀👍🏽 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Ünïcödé ÀÉÎÕÜ ñ ß",
    "", "x", "thethethe the the thee thou thy", "12345 67.89", "NUL\x00and\x7fDEL", "\u2581 lower block",
]
B = 2**32  # seeds at and above it reach the rule's high word
GENERATION = [  # (model, prompt, options); options use the JS names
    ("char", "ROMEO:", {"temperature": 0, "maxNewTokens": 40}),
    ("char", "ROMEO:", {"temperature": 1, "seed": 0, "maxNewTokens": 60}),
    ("char", "ROMEO:", {"temperature": 0.8, "seed": 1, "maxNewTokens": 60}),
    ("char", "First Citizen:", {"temperature": 1, "seed": B + 7, "maxNewTokens": 50}),
    ("char", "KING", {"temperature": 1, "seed": 2**64 - 1, "maxNewTokens": 50}),
    ("char", "the", {"temperature": 1, "topK": 5, "seed": 3, "maxNewTokens": 50}),
    ("char", "the", {"temperature": 1, "topP": 0.9, "seed": 4, "maxNewTokens": 50}),
    ("char", "And", {"temperature": 0.7, "topK": 10, "topP": 0.8, "seed": 5, "maxNewTokens": 50}),
    ("char", "Hark", {"temperature": 1, "stop": ["\n"], "seed": 6, "maxNewTokens": 100}),
    ("char", "O", {"temperature": 1, "stop": ["e", "th"], "seed": 7, "maxNewTokens": 100}),
    ("char", "", {"temperature": 1, "seed": 8, "maxNewTokens": 30}),
    ("char", "café ROMEO", {"temperature": 1, "seed": 9, "unknown": "drop", "maxNewTokens": 30}),
    ("char", "naïve 😀", {"temperature": 1, "seed": 10, "unknown": "replace", "maxNewTokens": 30}),
    ("char", "ROMEO:", {"temperature": 1e-300, "seed": 11, "maxNewTokens": 40}),
    ("char", "ROMEO:", {"temperature": 5, "seed": 12, "maxNewTokens": 40}),
    ("char", "ROMEO:", {"temperature": 1, "topK": 1, "seed": 13, "maxNewTokens": 20}),
    ("bpe", "ROMEO:", {"temperature": 0, "maxNewTokens": 30}),
    ("bpe", "café — naïve 日本語", {"temperature": 1, "seed": 14, "maxNewTokens": 40}),
    ("bpe", "ROMEO:\n", {"temperature": 1, "topP": 0.95, "seed": 2**40 + 3, "maxNewTokens": 40}),
    ("bpe", "the king", {"temperature": 1, "topK": 20, "seed": 15, "maxNewTokens": 40}),
    ("bpe", "JULIET:", {"temperature": 1, "stop": ["\n\n", "e"], "seed": 16, "maxNewTokens": 60}),
    ("bpe", "", {"temperature": 1.5, "seed": 17, "maxNewTokens": 60}),
]
BATCHES = [  # (model, prompts, options): generateBatch; seed one int (s + i) or one per prompt
    ("char", ["ROMEO:", "JULIET:", "", "the"], {"temperature": 1, "seed": 100, "maxNewTokens": 40}),
    ("bpe", ["ROMEO:", "日本", "the"], {"temperature": 0.9, "topK": 30, "seed": [1, B + 1, 2**64 - 2],
                                       "maxNewTokens": 30}),
]
PY_NAMES = {"maxNewTokens": "max_new_tokens", "topK": "top_k", "topP": "top_p"}


def python_options(options: dict) -> dict:
    return {PY_NAMES.get(k, k): v for k, v in options.items()}


def as_json(options: dict) -> dict:
    """Seeds as strings: JSON numbers above 2^53 lose digits in JavaScript."""
    seed = options.get("seed")
    if seed is None:
        return options
    return {**options, "seed": [str(s) for s in seed] if isinstance(seed, list) else str(seed)}


def tokenizer_cases(tokenizer, rng: random.Random) -> dict:
    corpus = CORPUS.read_text(encoding="utf-8")
    texts = TEXTS + [corpus[i:i + rng.randrange(1, 120)] for i in (rng.randrange(len(corpus)) for _ in range(200))]
    if tokenizer.kind == "char":
        texts = [t for t in texts if all(c in tokenizer.stoi for c in t)]
    id_lists = [[rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 16))] for _ in range(300)]
    if tokenizer.kind != "char":  # runs of byte pieces: whole, cut and invalid UTF-8
        byte = {b: tokenizer.sp.PieceToId(f"<0x{b:02X}>") for b in range(256)}
        for data in ("é".encode(), "日本".encode(), "😀".encode(), "😀".encode()[:3], "日".encode()[:2], b"\xff\xfe",
                     b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", "a\u00e9".encode()[1:]):
            id_lists.append([byte[b] for b in data])
            id_lists.append([byte[b] for b in data] + [rng.randrange(tokenizer.vocab_size)])
    return {"texts": texts, "ids": [tokenizer.encode(t) for t in texts],
            "id_lists": id_lists, "decoded": [tokenizer.decode(ids) for ids in id_lists]}


def schema() -> list[dict]:
    """The manifest's fields as the Python runtime checks them: serve/js must check the same."""
    from rnnlm.runtime.manifest import AS_A_REQUEST, SCHEMA

    return [{"path": f.path, "type": f.type.__name__, "optional": f.optional,
             "rule": None if f.rule in (None, AS_A_REQUEST) else f.rule.says} for f in SCHEMA]


def external_data(folder: Path, out: Path) -> None:
    """A copy of folder whose graph keeps its largest initializer in ../secret.bin, its manifest's
    sha256 and size updated: what a runtime must refuse before onnxruntime reads the outside file."""
    import hashlib
    import shutil

    import onnx

    shutil.copytree(folder, out)
    model = onnx.load(out / "model.onnx")
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (out.parent / "secret.bin").write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    graph = model.SerializeToString()
    (out / "model.onnx").write_bytes(graph)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model"].update(sha256=hashlib.sha256(graph).hexdigest(), bytes=len(graph))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def write(out: Path) -> Path:
    import torch

    from rnnlm.export import write_export
    from rnnlm.model import RNNLM, ModelConfig
    from rnnlm.runtime.generator import Generator
    from rnnlm.tokenizers import CharTokenizer, SentencePieceTokenizer

    text = CORPUS.read_text(encoding="utf-8")
    lines = text.splitlines()
    tokenizers = {"char": CharTokenizer.train(text), "bpe": SentencePieceTokenizer.train(lines, 400, "bpe"),
                  "unigram": SentencePieceTokenizer.train(lines, 400, "unigram")}
    (out / "unigram.vocab.json").write_bytes(tokenizers["unigram"].vocabulary())
    generators = {}
    for kind in ("char", "bpe"):
        torch.manual_seed(0)
        model = RNNLM(ModelConfig(tokenizers[kind].vocab_size, hidden_size=32, num_layers=2)).eval()
        with torch.no_grad():  # sharper distributions than a fresh model's, as a trained one has
            model.V.mul_(4)
        write_export(model, tokenizers[kind], out / kind, training={"corpus": "tinyshakespeare-150k"})
        generators[kind] = Generator.load(out / kind, threads=1)
    external_data(out / "char", out / "external")
    cases = [{"model": m, "prompt": p, "options": as_json(o), "text": generators[m].generate(p, **python_options(o))}
             for m, p, o in GENERATION]
    batches = [{"model": m, "prompts": ps, "options": as_json(o),
                "texts": generators[m].generate_batch(ps, **python_options(o))} for m, ps, o in BATCHES]
    rng = random.Random(0)
    expected = {"generate": cases, "generate_batch": batches,
                "tokenizers": {kind: tokenizer_cases(t, rng) for kind, t in tokenizers.items()},
                "schema": schema()}
    path = out / "expected.json"
    path.write_text(json.dumps(expected, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
