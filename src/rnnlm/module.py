"""The LightningModule: RNNLM trained by truncated BPTT with its state carried across batches.

The state is the model's tuple of (L, B, H) tensors: (h,) for rnn and gru, (h, c) for lstm; all of it is
carried (detached) from batch to batch and reset at each epoch. Logs train/loss and val/loss (nats per
token) and val/bpc (bits per character of the validation text, so char and subword models compare),
prints a short sample at each validation, and keeps in every checkpoint what export and exact resume
need: the tokenizer, the corpus and the carried state. On one CUDA device the whole training step can be one
replayed CUDA graph (--model.cuda_graph, rnnlm.graphed); training_step then takes the update itself.
"""

import math
import time
from dataclasses import fields

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from rnnlm import graphed
from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.tokenizers import start_token

OPTIMIZERS = ("adamw", "adagrad")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision: fp32, TF32, bf16 passes
DEFAULTS = {f.name: f.default for f in fields(ModelConfig)}  # of a checkpoint saved before a field existed


class RNNLMModule(L.LightningModule):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = ModelConfig.hidden_size,  # the model's fields, with ModelConfig's defaults
        num_layers: int = ModelConfig.num_layers,
        nonlinearity: str = ModelConfig.nonlinearity,
        cell: str = ModelConfig.cell,
        dropout: float = ModelConfig.dropout,
        input_dropout: float = ModelConfig.input_dropout,
        init: str = ModelConfig.init,
        input_scale: float = ModelConfig.input_scale,
        bptt: str = ModelConfig.bptt,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        sample_chars: int = 200,
        cuda_graph: str | bool = "auto",  # a YAML true or false comes as a bool
        float32_matmul_precision: str = "highest",
    ) -> None:
        super().__init__()
        cuda_graph = str(cuda_graph).lower()
        for option, value, choices in [("optimizer", optimizer, OPTIMIZERS), ("cuda_graph", cuda_graph, graphed.MODES),
                                       ("float32_matmul_precision", float32_matmul_precision, MATMUL_PRECISIONS)]:
            if value not in choices:
                raise RnnlmError(f"unknown {option} {value!r}: use one of {', '.join(choices)} (--model.{option})")
        self.save_hyperparameters()
        self.hparams.cuda_graph = cuda_graph  # as a word, also when YAML gave a bool
        try:
            self.model = RNNLM(ModelConfig.from_hparams(self.hparams))
        except ValueError as e:  # its message starts with the field's name: the option to change
            raise RnnlmError(f"--model.{e}") from None
        self.state: tuple[torch.Tensor, ...] | None = None  # (L, B, H) each, carried (detached) across batches
        self.val_state: tuple[torch.Tensor, ...] | None = None
        self.val_nats = self.val_tokens = 0.0
        self.last_val_bpc = float("nan")
        self._clock: tuple[float, int] | None = None
        self.graphed: graphed.GraphedStep | None = None  # the training step as one CUDA graph, when on

    def on_fit_start(self) -> None:
        torch.set_float32_matmul_precision(self.hparams.float32_matmul_precision)
        trainer = self.trainer
        self.graphed = None
        if graphed.resolve(self.hparams.cuda_graph, trainer, self.hparams.optimizer):
            self.graphed = graphed.GraphedStep(self.model, trainer.optimizers[0], trainer.gradient_clip_val,
                                               trainer.gradient_clip_algorithm)

    def on_train_start(self) -> None:
        if self.trainer.world_size > 1:  # seed_everything gave every rank one seed: each rank its own dropout masks
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def forward(self, input_ids: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None,
                targets: torch.Tensor | None = None):
        return self.model(input_ids, state, targets)

    # ------------------------------------------------------------------------- training

    def on_train_epoch_start(self) -> None:
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if 0 < done < self.trainer.num_training_batches and self.state is not None:  # resumed mid-epoch
            self.state = tuple(s.to(self.device) for s in self.state)
        else:  # a new epoch starts from the zero state
            self.state = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T) each
        if self.graphed is None:
            _, state, loss = self.model(x, self.state, y)
        else:  # forward, backward, clipping and AdamW's update: backward and optimizer_step below do nothing more
            loss, state = self.graphed(x, y, self.state)
        if not torch.isfinite(loss):
            raise RnnlmError(
                f"the training loss became {loss.item()} at step {self.global_step}; training stopped and the last "
                "good checkpoint is kept; lower --model.lr or set --trainer.gradient_clip_val, then resume with "
                "--ckpt_path last"
            )
        self.state = tuple(s.detach() for s in state)
        self.log("train/loss", loss, prog_bar=True)
        self.log_throughput(x.numel())
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if 0 < self.trainer.max_steps <= self.global_step:  # the last step: Lightning validates (and checkpoints)
            self.trainer.should_stop = True  # a stopping run, so a max_steps off the val_check_interval is scored too

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self.graphed is None:
            super().backward(loss, *args, **kwargs)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        if self.graphed is None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        else:  # training_step takes the step; Lightning still counts it and steps the schedule
            optimizer_closure()

    def log_throughput(self, tokens: int) -> None:
        now = time.perf_counter()
        if self._clock is not None:
            self.log("train/tokens_per_s", tokens * self.trainer.world_size / (now - self._clock[0]), prog_bar=True)
        self._clock = (now, tokens)

    # ------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self.val_state = None
        self.val_nats = self.val_tokens = 0.0
        self._clock = None

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits, self.val_state, _ = self.model(x, self.val_state)
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
        state = self.model.init_state(1)
        for token in prompt_ids:
            logits, *state = self.model.step(torch.tensor([token], device=self.device), *state)
        out = []
        for _ in range(max_new_tokens):
            probs = torch.softmax(logits[0].float().cpu() / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
            out.append(token)
            logits, *state = self.model.step(torch.tensor([token], device=self.device), *state)
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
            # the carried state of every rank, in state_names order: (world, L, B, H) each
            "state": [self.all_gather(s).cpu() for s in self.state] if self.state is not None else None,
        }
        if self.graphed is not None:
            graphed.as_eager(checkpoint.get("optimizer_states", []))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, now = checkpoint.get("hyper_parameters", {}), self.model.config.shape()
        saved = {k: saved.get(k, DEFAULTS.get(k)) for k in ModelConfig.SHAPE}  # a field added later: its default
        changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in ModelConfig.SHAPE if saved[k] != now[k]]
        if changed:
            raise RnnlmError(
                f"the checkpoint was trained with another model ({'; '.join(changed)}); resume with the options it "
                "was trained with, or start a new run in another --trainer.default_root_dir"
            )
        facts = checkpoint.get("rnnlm", {})
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        tokenizer = facts.get("tokenizer", {}).get("data")
        if datamodule is not None and tokenizer is not None and tokenizer != datamodule.tokenizer.to_bytes():
            raise RnnlmError(
                "the checkpoint was trained with another tokenizer or corpus than --data gives now; resume with the "
                "same --data.corpus and --data.tokenizer, or start a new run in another --trainer.default_root_dir"
            )
        carried = facts.get("state")
        if carried is None and facts.get("hidden") is not None:  # saved before the state was a tuple: h alone
            carried = [facts["hidden"]]
        world = self.trainer.world_size if self._trainer is not None else 1
        carried = [s[None] if s.dim() == 3 else s for s in carried or ()]  # all_gather adds no dim in one process
        whole = len(carried) == len(self.model.state_names) and all(s.shape[0] == world for s in carried)
        self.state = tuple(s[self.global_rank] for s in carried) if whole else None
