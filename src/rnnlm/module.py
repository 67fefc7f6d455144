"""The LightningModule: RNNLM trained by truncated BPTT with the hidden state carried across batches.

Logs train/loss and val/loss (nats per token) and val/bpc (bits per character of the validation
text, so char and subword models compare), prints a short sample at each validation, and keeps
in every checkpoint what export needs: the tokenizer, the corpus and the carried hidden state.
"""

import math
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.tokenizers import start_token

OPTIMIZERS = ("adamw", "adagrad")


class RNNLMModule(L.LightningModule):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = ModelConfig.hidden_size,  # the model's fields, with ModelConfig's defaults
        num_layers: int = ModelConfig.num_layers,
        nonlinearity: str = ModelConfig.nonlinearity,
        dropout: float = ModelConfig.dropout,
        bptt: str = ModelConfig.bptt,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        sample_chars: int = 200,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise RnnlmError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)} (--model.optimizer)")
        self.save_hyperparameters()
        try:
            self.model = RNNLM(ModelConfig.from_hparams(self.hparams))
        except ValueError as e:  # its message starts with the field's name: the option to change
            raise RnnlmError(f"--model.{e}") from None
        self.hidden: torch.Tensor | None = None  # (L, B, H), carried (detached) from batch to batch
        self.val_hidden: torch.Tensor | None = None
        self.val_nats = self.val_tokens = 0.0
        self.last_val_bpc = float("nan")
        self._clock: tuple[float, int] | None = None

    def forward(self, input_ids: torch.Tensor, hidden: torch.Tensor | None = None, targets: torch.Tensor | None = None):
        return self.model(input_ids, hidden, targets)

    # ------------------------------------------------------------------------- training

    def on_train_epoch_start(self) -> None:
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if 0 < done < self.trainer.num_training_batches and self.hidden is not None:  # resumed mid-epoch
            self.hidden = self.hidden.to(self.device)
        else:  # a new epoch starts from the zero state
            self.hidden = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T) each
        _, hidden, loss = self.model(x, self.hidden, y)
        if not torch.isfinite(loss):
            raise RnnlmError(
                f"the training loss became {loss.item()} at step {self.global_step}; training stopped and the last "
                "good checkpoint is kept; lower --model.lr or set --trainer.gradient_clip_val, then resume with "
                "--ckpt_path last"
            )
        self.hidden = hidden.detach()
        self.log("train/loss", loss, prog_bar=True)
        self.log_throughput(x.numel())
        return loss

    def log_throughput(self, tokens: int) -> None:
        now = time.perf_counter()
        if self._clock is not None:
            self.log("train/tokens_per_s", tokens * self.trainer.world_size / (now - self._clock[0]), prog_bar=True)
        self._clock = (now, tokens)

    # ------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self.val_hidden = None
        self.val_nats = self.val_tokens = 0.0
        self._clock = None

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits, self.val_hidden, _ = self.model(x, self.val_hidden)
        self.val_nats += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
        self.val_tokens += (y != -100).sum()

    def on_validation_epoch_end(self) -> None:
        totals = torch.stack([torch.as_tensor(self.val_nats, dtype=torch.float64, device=self.device),
                              torch.as_tensor(self.val_tokens, dtype=torch.float64, device=self.device)])
        nats, tokens = self.trainer.strategy.reduce(totals, reduce_op="sum").tolist()
        datamodule, meta = self.trainer.datamodule, self.trainer.datamodule.meta
        # nats per token x tokens per character: exact over the whole split, an estimate over part of it
        self.last_val_bpc = nats / max(tokens, 1) * meta["val_tokens"] / meta["val_chars"] / math.log(2)
        self.log("val/loss", nats / max(tokens, 1), prog_bar=True, sync_dist=False)
        self.log("val/bpc", self.last_val_bpc, prog_bar=True, sync_dist=False)
        if not self.trainer.sanity_checking and self.hparams.sample_chars > 0:
            tokenizer = datamodule.tokenizer
            text = tokenizer.decode(self.sample([start_token(tokenizer)], self.hparams.sample_chars))
            self.print(f"\n--- sample at step {self.global_step} (val/bpc {self.last_val_bpc:.3f}) ---\n{text}\n---")

    @torch.no_grad()
    def sample(self, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.8, seed: int = 0) -> list[int]:
        """Tokens drawn from the model after the prompt, one step at a time (O(1) per token)."""
        was_training, generator = self.training, torch.Generator(device="cpu").manual_seed(seed)
        self.eval()
        hidden = self.model.init_hidden(1)
        for token in prompt_ids:
            logits, hidden = self.model.step(torch.tensor([token], device=self.device), hidden)
        out = []
        for _ in range(max_new_tokens):
            probs = torch.softmax(logits[0].float().cpu() / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
            out.append(token)
            logits, hidden = self.model.step(torch.tensor([token], device=self.device), hidden)
        self.train(was_training)
        return out

    # ------------------------------------------------------------------------- optimisation

    def configure_optimizers(self):
        h = self.hparams
        if h.optimizer == "adagrad":  # the seed's choice, at a constant rate
            return torch.optim.Adagrad(self.parameters(), lr=h.lr)
        decay = [p for n, p in self.named_parameters() if p.dim() == 2]  # U, W, V; not b, c
        no_decay = [p for n, p in self.named_parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=h.lr
        )
        total = max(self.trainer.estimated_stepping_batches, 1)

        def warmup_cosine(step: int) -> float:
            if step < h.warmup_steps:
                return (step + 1) / h.warmup_steps
            progress = min((step - h.warmup_steps) / max(total - h.warmup_steps, 1), 1.0)
            return h.min_lr_ratio + (1 - h.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = {"scheduler": LambdaLR(optimizer, warmup_cosine), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = self.trainer.datamodule
        tokenizer, meta = datamodule.tokenizer, datamodule.meta
        checkpoint["rnnlm"] = {
            "tokenizer": {"type": tokenizer.kind, "data": tokenizer.to_bytes()},
            "corpus": meta["corpus"],
            "corpus_sha256": meta["sha256"],
            "val_bpc": self.last_val_bpc,
            "hidden": self.all_gather(self.hidden).cpu() if self.hidden is not None else None,  # (world, L, B, H)
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, now = checkpoint.get("hyper_parameters", {}), self.model.config.shape()
        changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in ModelConfig.SHAPE if saved.get(k) != now[k]]
        if changed:
            raise RnnlmError(
                f"the checkpoint was trained with another model ({'; '.join(changed)}); resume with the options it "
                "was trained with, or start a new run in another --trainer.default_root_dir"
            )
        state = checkpoint.get("rnnlm", {})
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        tokenizer = state.get("tokenizer", {}).get("data")
        if datamodule is not None and tokenizer is not None and tokenizer != datamodule.tokenizer.to_bytes():
            raise RnnlmError(
                "the checkpoint was trained with another tokenizer or corpus than --data gives now; resume with the "
                "same --data.corpus and --data.tokenizer, or start a new run in another --trainer.default_root_dir"
            )
        hidden, world = state.get("hidden"), self.trainer.world_size if self._trainer is not None else 1
        if hidden is not None and hidden.dim() == 3:  # all_gather adds no dim in a single process
            hidden = hidden[None]
        self.hidden = hidden[self.global_rank] if hidden is not None and hidden.shape[0] == world else None
