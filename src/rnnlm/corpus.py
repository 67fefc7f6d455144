"""A corpus on disk -> token ids on disk, once: `prepare` and the steps it is made of.

A corpus is resolved (a path, or a named corpus: cached, downloaded and checked, or an offline
fallback), scanned, split 90/10 by characters, tokenized in chunks that end at a newline and
written as token ids (train.bin, val.bin) with its tokenizer and meta.json in one folder under
`data_dir`, built whole or not at all. No torch and no Lightning: `rnnlm prepare` needs neither.
"""

import codecs
import hashlib
import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rnnlm.atomic import atomic_folder, write_atomic
from rnnlm.errors import RnnlmError
from rnnlm.tokenizers import CharTokenizer, Tokenizer, train_tokenizer

if TYPE_CHECKING:
    from tqdm import tqdm  # imported by prepare: the runtime reads TRAIN_FRACTION without the train extra

CORPORA = {
    "shakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    },
}
TRAIN_FRACTION = 0.9
CHUNK_CHARS = 1 << 20


# ----------------------------------------------------------------------------- corpus resolution


def fallback_corpus(data_dir: Path) -> Path:
    """English text that ships with every Python: the pydoc topic pages of the standard library."""
    from pydoc_data.topics import topics

    path = data_dir / "corpora" / "pydoc-topics.txt"
    if not path.exists():
        write_atomic(path, "\n\n".join(topics[k] for k in sorted(topics)).encode())
    return path


def download(url: str, sha256: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=15) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RnnlmError(f"the download of {url} does not match its sha256 {sha256}; try again later")
    write_atomic(path, data)


def resolve_corpus(corpus: str, data_dir: str | Path) -> Path:
    """A local path as given; else a named corpus from the cache, else downloaded and checked,
    else (offline) the standard library's text, announced loudly."""
    data_dir = Path(data_dir)
    if corpus not in CORPORA:
        path = Path(corpus).expanduser()
        if path.is_file():
            return path
        if path.suffix or os.sep in corpus:
            raise RnnlmError(f"corpus file {corpus} does not exist; give the path of a UTF-8 text file")
        raise RnnlmError(f"unknown corpus {corpus!r}: give a text file's path or one of {sorted(CORPORA)}")
    spec, path = CORPORA[corpus], data_dir / "corpora" / f"{corpus}.txt"
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == spec["sha256"]:
        return path
    try:
        download(spec["url"], spec["sha256"], path)
        return path
    except OSError as e:
        fallback = fallback_corpus(data_dir)
        print(
            f"\n{'!' * 78}\n! cannot download corpus {corpus!r} ({e}).\n"
            f"! TRAINING ON THE OFFLINE FALLBACK {fallback} INSTEAD.\n"
            f"! To train on {corpus}, put its file at {path} or pass --data.corpus PATH.\n{'!' * 78}\n",
            file=sys.stderr,
        )
        return fallback


# ----------------------------------------------------------------------------- encoding to disk


def iter_text(path: Path) -> Iterator[str]:
    """The file's text in chunks of about CHUNK_CHARS bytes that end at a newline, decoded strictly as UTF-8."""
    decoder, offset, carry = codecs.getincrementaldecoder("utf-8")(), 0, ""
    with open(path, "rb") as f:
        while True:
            raw, pending = f.read(CHUNK_CHARS), decoder.getstate()[0]  # pending: bytes of a split character
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:  # e.object is pending + raw
                raise RnnlmError(
                    f"{path} is not UTF-8: byte 0x{e.object[e.start]:02x} at offset {offset - len(pending) + e.start} "
                    "cannot be decoded; "
                    "convert the file to UTF-8 (e.g. iconv -t UTF-8)"
                ) from None
            offset += len(raw)
            if not raw:
                if text:
                    yield text
                return
            cut = text.rfind("\n") + 1
            if cut:
                yield text[:cut]
            carry = text[cut:]


def scan(path: Path) -> dict:
    """One pass over the corpus: its sha256, length in characters and character set."""
    sha, chars, n = hashlib.sha256(), set(), 0
    for text in iter_text(path):
        sha.update(text.encode())
        chars.update(text)
        n += len(text)
    if n == 0:
        raise RnnlmError(f"corpus {path} is empty; give a UTF-8 text file with some text in it")
    return {"sha256": sha.hexdigest(), "chars": "".join(sorted(chars)), "n_chars": n}


def iter_split(path: Path, start: int, stop: int) -> Iterator[str]:
    """The characters [start, stop) of the corpus, in chunks."""
    pos = 0
    for text in iter_text(path):
        lo, hi = max(start - pos, 0), min(stop - pos, len(text))
        if lo < hi:
            yield text[lo:hi]
        pos += len(text)


def encode_to_file(tokenizer: Tokenizer, chunks: Iterator[str], out: Path, dtype: type, bar: "tqdm") -> int:
    n = 0
    with open(out, "wb") as f:
        for chunk in chunks:
            ids = np.asarray(tokenizer.encode(chunk), dtype=dtype)
            ids.tofile(f)
            n += len(ids)
            bar.update(len(chunk))
    return n


def prepare(corpus: str = "shakespeare", tokenizer: str = "char", vocab_size: int = 2000,
            data_dir: str | Path = "data") -> Path:
    """Tokenize the corpus once into data_dir/<corpus>-<sha>/<tokenizer>/ and return that folder:
    train.bin and val.bin (token ids), the tokenizer file, and meta.json. Reused when present.
    vocab_size applies to subword tokenizers only. These defaults are `rnnlm prepare`'s and --data's."""
    from tqdm import tqdm
    data_dir = Path(data_dir)
    path = resolve_corpus(corpus, data_dir)
    info = scan(path)
    name = f"{tokenizer}-{vocab_size}" if tokenizer != CharTokenizer.kind else tokenizer
    folder = data_dir / f"{path.stem}-{info['sha256'][:12]}" / name
    if (folder / "meta.json").exists():
        return folder
    n_train = int(TRAIN_FRACTION * info["n_chars"])
    lines = (line for chunk in iter_split(path, 0, n_train) for line in chunk.splitlines() if line)
    tok = train_tokenizer(tokenizer, vocab_size, info["chars"], lines)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    with atomic_folder(folder, replace=False) as tmp:  # another process (a DDP rank) may finish first
        tok.save(tmp)
        with tqdm(total=info["n_chars"], unit="char", unit_scale=True, desc=f"encoding {path.name}",
                  disable=info["n_chars"] < 4 * CHUNK_CHARS) as bar:
            n_ids = {
                "train": encode_to_file(tok, iter_split(path, 0, n_train), tmp / "train.bin", dtype, bar),
                "val": encode_to_file(tok, iter_split(path, n_train, info["n_chars"]), tmp / "val.bin", dtype, bar),
            }
        meta = {
            "corpus": corpus if corpus in CORPORA else str(path), "corpus_file": str(path), "sha256": info["sha256"],
            "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
            "train_chars": n_train, "val_chars": info["n_chars"] - n_train,
            "train_tokens": n_ids["train"], "val_tokens": n_ids["val"],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder
