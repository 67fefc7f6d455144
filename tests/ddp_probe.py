"""A callback the DDP test passes to `rnnlm fit`: each rank writes what it trained on, its first random draws
(those its dropout masks would take) and its final weights."""

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class Probe(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.first_tokens, self.draws = Path(out_dir), [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.first_tokens.append(batch[0][:, 0].tolist())  # where each of this rank's streams is
        if batch_idx == 0:
            self.draws = torch.rand(4).tolist()

    def on_train_end(self, trainer, module):
        weights = torch.cat([p.detach().flatten() for p in module.parameters()]).tolist()
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "first_tokens": self.first_tokens,
                  "draws": self.draws, "weights": weights}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
