"""Corpus -> token ids on disk -> batches of B contiguous streams for truncated BPTT.

A corpus is resolved (a path, or a named corpus: cached, downloaded and checked, or an
offline fallback), split 90/10 by characters, tokenized once in chunks and written as
memory-mapped ids under `data_dir`, then cut into B streams whose windows [kT, (k+1)T)
form batch k, so the hidden state can be carried from one batch to the next.
"""

import codecs
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from rnnlm.errors import RnnlmError
from rnnlm.tokenizers import CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer, write_atomic

CORPORA = {
    "shakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    },
}
TOKENIZERS = ("char", "bpe", "unigram")
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


def iter_text(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """The file's text in chunks that end at a newline, decoded strictly as UTF-8."""
    decoder, offset, carry = codecs.getincrementaldecoder("utf-8")(), 0, ""
    with open(path, "rb") as f:
        while True:
            raw, pending = f.read(chunk_chars), decoder.getstate()[0]  # pending: bytes of a split character
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


def train_tokenizer(kind: str, vocab_size: int, path: Path, info: dict, n_train: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer(info["chars"])
    if kind in ("bpe", "unigram"):
        lines = (line for chunk in iter_split(path, 0, n_train) for line in chunk.splitlines() if line)
        return SentencePieceTokenizer.train(lines, vocab_size, kind)
    raise RnnlmError(f"unknown tokenizer {kind!r}: use one of {', '.join(TOKENIZERS)} (--data.tokenizer)")


def encode_to_file(tokenizer: Tokenizer, chunks: Iterator[str], out: Path, dtype: type, bar: tqdm) -> int:
    n = 0
    with open(out, "wb") as f:
        for chunk in chunks:
            ids = np.asarray(tokenizer.encode(chunk), dtype=dtype)
            ids.tofile(f)
            n += len(ids)
            bar.update(len(chunk))
    return n


def prepare(corpus: str, tokenizer: str, vocab_size: int, data_dir: str | Path) -> Path:
    """Tokenize the corpus once into data_dir/<corpus>-<sha>/<tokenizer>/ and return that folder:
    train.bin and val.bin (token ids), the tokenizer file, and meta.json. Reused when present."""
    data_dir = Path(data_dir)
    path = resolve_corpus(corpus, data_dir)
    info = scan(path)
    name = f"{tokenizer}-{vocab_size}" if tokenizer != "char" else "char"
    folder = data_dir / f"{path.stem}-{info['sha256'][:12]}" / name
    if (folder / "meta.json").exists():
        return folder
    n_train = int(TRAIN_FRACTION * info["n_chars"])
    tok = train_tokenizer(tokenizer, vocab_size, path, info, n_train)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}."))
    try:
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
        try:
            os.rename(tmp, folder)
        except OSError:  # another process (a DDP rank) finished first: keep its folder
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ----------------------------------------------------------------------------- streams for truncated BPTT


class StreamDataset(IterableDataset):
    """Batches of B contiguous streams: batch k holds tokens [kT, (k+1)T) of every stream.

    The n = N-1 (input, target) pairs are cut into B * world_size streams; this rank owns
    streams [rank * B, (rank + 1) * B). With drop_last the tail that fills no whole window is
    dropped (training); without it the streams are padded with target -100 so every pair is
    scored exactly once (validation).
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        self.ids, self.T, self.drop_last = ids, seq_len, drop_last
        n, streams = len(ids) - 1, batch_size * world_size
        self.stream_len = n // streams if drop_last else math.ceil(n / streams)
        self.num_batches = self.stream_len // seq_len if drop_last else math.ceil(self.stream_len / seq_len)
        self.n = n
        self.starts = (rank * batch_size + np.arange(batch_size)) * self.stream_len  # (B,)
        self.skip = 0

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of batch k, each (B, T) int64 (T shorter for the last, padded batch)."""
        offsets = np.arange(k * self.T, min((k + 1) * self.T, self.stream_len))  # (T,)
        idx = self.starts[:, None] + offsets[None, :]  # (B, T)
        valid = idx < self.n
        idx = np.where(valid, idx, 0)
        x = torch.from_numpy(self.ids[idx].astype(np.int64))
        y = torch.from_numpy(np.where(valid, self.ids[idx + 1].astype(np.int64), -100))  # -100: no target
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self.skip = self.skip, 0
        for k in range(start, self.num_batches):
            yield self.batch(k)


class StreamLoader(DataLoader):
    """A DataLoader over a StreamDataset that Lightning can resume mid-epoch: its state is the
    number of batches of this epoch already trained on, and restoring it skips those."""

    def __init__(self, dataset: StreamDataset, position: Callable[[], int] = lambda: 0) -> None:
        super().__init__(dataset, batch_size=None)
        self.position = position

    def state_dict(self) -> dict:
        return {"next_batch": self.position()}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.skip = state["next_batch"]


class RNNLMDataModule(L.LightningDataModule):
    """A corpus tokenized once on disk, served as streams for stateful truncated BPTT."""

    def __init__(
        self,
        corpus: str = "shakespeare",
        tokenizer: str = "char",
        vocab_size: int = 2000,
        batch_size: int = 32,
        seq_len: int = 128,
        data_dir: str = "data",
    ) -> None:
        super().__init__()
        if tokenizer not in TOKENIZERS:
            raise RnnlmError(f"unknown tokenizer {tokenizer!r}: use one of {', '.join(TOKENIZERS)} (--data.tokenizer)")
        if batch_size < 1 or seq_len < 1:
            raise RnnlmError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        # kept as attributes, not hparams: the model's vocab_size is the tokenizer's, linked by the CLI
        self.corpus, self.tokenizer_kind, self.vocab_size = corpus, tokenizer, vocab_size
        self.batch_size, self.seq_len, self.data_dir = batch_size, seq_len, data_dir

    @cached_property
    def folder(self) -> Path:
        """The prepared folder; made on first use (every process may call this: writes are atomic)."""
        return prepare(self.corpus, self.tokenizer_kind, self.vocab_size, self.data_dir)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.folder)

    @cached_property
    def meta(self) -> dict:
        """The corpus facts of meta.json, read once (validation and every checkpoint use them)."""
        return json.loads((self.folder / "meta.json").read_text())

    def prepare_data(self) -> None:
        self.folder  # noqa: B018 (writes the files on first use)

    def setup(self, stage: str) -> None:
        meta, B, T = self.meta, self.batch_size, self.seq_len
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        ids = {s: np.memmap(self.folder / f"{s}.bin", dtype=meta["dtype"], mode="r") for s in ("train", "val")}
        self.train_set = StreamDataset(ids["train"], B, T, rank, world, drop_last=True)
        self.val_set = StreamDataset(ids["val"], B, T, rank, world, drop_last=False)
        if len(self.train_set) == 0:
            raise RnnlmError(
                f"the corpus is too short: its {meta['train_tokens']} training tokens fill no batch of "
                f"{world} x batch_size {B} streams x seq_len {T}; "
                "lower --data.batch_size or --data.seq_len, or use a longer corpus"
            )
        if meta["val_tokens"] < 2:
            raise RnnlmError("the corpus is too short to hold out any validation text; use a longer corpus")

    def train_dataloader(self) -> StreamLoader:
        progress = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.completed  # noqa: E731
        return StreamLoader(self.train_set, position=progress)

    def val_dataloader(self) -> StreamLoader:
        return StreamLoader(self.val_set)
