"""Token ids on disk -> batches of B contiguous streams for truncated BPTT, as a LightningDataModule.

The ids are those rnnlm.corpus.prepare writes once (memory-mapped here); they are cut into B streams
whose windows [kT, (k+1)T) form batch k, so the hidden state can be carried from one batch to the next.
"""

import inspect
import json
import math
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from rnnlm.corpus import prepare
from rnnlm.errors import RnnlmError
from rnnlm.tokenizers import TOKENIZERS, Tokenizer, load_tokenizer

PREPARE = {name: p.default for name, p in inspect.signature(prepare).parameters.items()}  # its defaults


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
        corpus: str = PREPARE["corpus"],
        tokenizer: str = PREPARE["tokenizer"],
        vocab_size: int = PREPARE["vocab_size"],
        batch_size: int = 32,
        seq_len: int = 128,
        data_dir: str = PREPARE["data_dir"],
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
