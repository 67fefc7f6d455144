"""Tokenizers with one interface: encode, decode, vocab_size, save, load. Never pickled.

- `char`: the vocabulary is the sorted set of characters of the training text, saved as JSON.
- `bpe` / `unigram`: sentencepiece trained on the training text, saved as its .model file.

This module imports no torch: the runtime uses it too.
"""

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from rnnlm.atomic import write_atomic
from rnnlm.errors import RnnlmError

SUBWORD = ("bpe", "unigram")  # sentencepiece model types
TOKENIZERS = ("char", *SUBWORD)  # every kind: --data.tokenizer, manifest.json's tokenizer.type
UNKNOWN_POLICIES = ("error", "drop", "replace")
VOCABULARY_FORMAT = "sentencepiece-vocab/1"  # SentencePieceTokenizer.vocabulary(), read by serve/js
VOCABULARY_FILE = "vocab.json"


class Tokenizer(Protocol):
    kind: str  # one of TOKENIZERS
    filename: str  # the file `save` writes inside a folder

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str, unknown: str = "error") -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def to_bytes(self) -> bytes: ...
    def save(self, directory: str | Path) -> Path: ...


class CharTokenizer:
    """One token per character; the vocabulary is the sorted characters seen in training."""

    kind = "char"
    filename = "tokenizer.json"

    def __init__(self, chars: str) -> None:
        if not chars:
            raise RnnlmError("a char vocabulary needs at least one character: the training text is empty")
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.replacement = " " if " " in self.stoi else chars[0]

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        """Token ids of text. Characters outside the vocabulary raise (unknown="error"),
        are dropped ("drop") or become a space, or the first character when there is none ("replace")."""
        stoi = self.stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError:
            pass
        missing = sorted({ch for ch in text if ch not in stoi})
        if unknown == "drop":
            return [stoi[ch] for ch in text if ch in stoi]
        if unknown == "replace":
            r = stoi[self.replacement]
            return [stoi.get(ch, r) for ch in text]
        if unknown != "error":
            raise RnnlmError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        raise RnnlmError(
            f"the text has {len(missing)} character(s) absent from the vocabulary: "
            f"{''.join(missing)!r} ({', '.join(f'U+{ord(c):04X}' for c in missing[:10])}); "
            "remove them, or pass unknown='drop' or 'replace' (--unknown on the command line)"
        )

    def decode(self, ids: list[int]) -> str:
        return "".join(map(self.chars.__getitem__, ids))  # twice as fast as a generator over long texts

    def to_bytes(self) -> bytes:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CharTokenizer":
        spec = json.loads(data)
        if spec.get("type") != "char" or not isinstance(spec.get("chars"), str):
            raise RnnlmError("not a char tokenizer file: expected JSON with type 'char' and a 'chars' string")
        return cls(spec["chars"])

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.filename
        write_atomic(path, self.to_bytes())
        return path


class SentencePieceTokenizer:
    """Subword tokens from a sentencepiece model (bpe or unigram) that round-trips text exactly:
    no normalisation, no dummy prefix, newline a piece of its own, unseen characters as bytes."""

    filename = "tokenizer.model"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        self.kind = _model_type(model_proto)

    @classmethod
    def train(cls, lines: Iterable[str], vocab_size: int, model_type: str = "bpe") -> "SentencePieceTokenizer":
        """Train on lines of text (newlines stripped; the newline is a reserved piece)."""
        import io

        import sentencepiece as spm

        if model_type not in SUBWORD:
            raise RnnlmError(f"sentencepiece model_type must be one of {', '.join(SUBWORD)}, got {model_type!r}")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=True,
                user_defined_symbols=["\n"],
                max_sentence_length=1 << 16,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise RnnlmError(f"sentencepiece cannot build a {model_type} vocabulary of {vocab_size} from this corpus: "
                             f"{_vocab_size_advice(str(e))}") from None
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        """Token ids of text; unseen characters become byte tokens, so `unknown` never applies."""
        return self.sp.EncodeAsIds(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds(list(ids))

    def to_bytes(self) -> bytes:
        return self.model_proto

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.filename
        write_atomic(path, self.model_proto)
        return path

    def vocabulary(self) -> bytes:
        """The model as JSON for runtimes without sentencepiece (serve/js), in the format VOCABULARY_FORMAT
        that serve/js/README.md documents: its pieces in id order as [piece, score, type] and the settings
        that encoding and decoding read. The scores are float32 values, written exactly."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        m.ParseFromString(self.model_proto)
        types = {number: name.lower() for name, number in pb.ModelProto.SentencePiece.Type.items()}
        normalizer = m.normalizer_spec
        spec = {
            "format": VOCABULARY_FORMAT,
            "model_type": self.kind,
            "byte_fallback": m.trainer_spec.byte_fallback,
            "unk_surface": m.trainer_spec.unk_surface,
            "normalizer": "identity" if not normalizer.precompiled_charsmap else normalizer.name,
            "add_dummy_prefix": normalizer.add_dummy_prefix,
            "remove_extra_whitespaces": normalizer.remove_extra_whitespaces,
            "escape_whitespaces": normalizer.escape_whitespaces,
            "treat_whitespace_as_suffix": m.trainer_spec.treat_whitespace_as_suffix,
            "pieces": [[p.piece, p.score, types[p.type]] for p in m.pieces],
        }
        return json.dumps(spec, ensure_ascii=False, separators=(",", ":")).encode()


def _vocab_size_advice(message: str) -> str:
    """What to do about sentencepiece's complaint, which names the bound it needs."""
    if m := re.search(r"value <= (\d+)", message):
        return f"the corpus supports at most {m[1]} pieces; lower --data.vocab_size or use a larger corpus"
    if m := re.search(r"required_chars\. \d+ vs (\d+)", message):
        return f"its characters and the 256 byte pieces need at least {m[1]}; raise --data.vocab_size"
    return f"{message.strip().splitlines()[-1]}; change --data.vocab_size"


def _model_type(model_proto: bytes) -> str:
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(model_proto)
    return pb.TrainerSpec.ModelType.Name(m.trainer_spec.model_type).lower()


def start_token(tokenizer: Tokenizer) -> int:
    """The token that starts an empty prompt: the newline where the vocabulary has one, else id 0."""
    ids = tokenizer.encode("\n", unknown="drop")
    return ids[-1] if ids else 0


def save_vocabulary(tokenizer: Tokenizer, directory: str | Path) -> Path | None:
    """Write a sentencepiece tokenizer's vocabulary file (VOCABULARY_FILE) into directory, for runtimes
    without sentencepiece; None for a char tokenizer, whose tokenizer.json any runtime reads."""
    if not isinstance(tokenizer, SentencePieceTokenizer):
        return None
    path = Path(directory) / VOCABULARY_FILE
    write_atomic(path, tokenizer.vocabulary())
    return path


def train_tokenizer(kind: str, vocab_size: int, chars: str, lines: Iterable[str]) -> Tokenizer:
    """A new tokenizer of a kind: char from the corpus's characters, bpe or unigram (vocab_size
    pieces) from the lines of the training text."""
    if kind == CharTokenizer.kind:
        return CharTokenizer(chars)
    if kind in SUBWORD:
        return SentencePieceTokenizer.train(lines, vocab_size, kind)
    raise RnnlmError(f"unknown tokenizer {kind!r}: use one of {', '.join(TOKENIZERS)} (--data.tokenizer)")


def tokenizer_from_bytes(kind: str, data: bytes) -> Tokenizer:
    if kind == CharTokenizer.kind:
        return CharTokenizer.from_bytes(data)
    if kind in SUBWORD:
        return SentencePieceTokenizer(data)
    raise RnnlmError(f"unknown tokenizer type {kind!r}: expected one of {', '.join(TOKENIZERS)}")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in a folder: tokenizer.json (char) or tokenizer.model (sentencepiece)."""
    directory = Path(directory)
    if (directory / CharTokenizer.filename).exists():
        return CharTokenizer.from_bytes((directory / CharTokenizer.filename).read_bytes())
    if (directory / SentencePieceTokenizer.filename).exists():
        return SentencePieceTokenizer((directory / SentencePieceTokenizer.filename).read_bytes())
    raise RnnlmError(
        f"no tokenizer in {directory}: expected {CharTokenizer.filename} or {SentencePieceTokenizer.filename}"
    )
