"""Training with a real Lightning Trainer on CPU: learning, carried state, resume, divergence."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from rnnlm.data import RNNLMDataModule
from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.module import RNNLMModule


def fit(corpus, root, max_steps=20, ckpt_path=None, callbacks=(), **model):
    L.seed_everything(0, verbose=False)
    dm = RNNLMDataModule(corpus=str(corpus), batch_size=4, seq_len=16, data_dir=str(root / "data"))
    module = RNNLMModule(vocab_size=dm.tokenizer.vocab_size, **{"hidden_size": 32, "warmup_steps": 2,
                                                               "sample_chars": 0, **model})
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", filename="{step}", save_top_k=-1, save_last=True)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, val_check_interval=10, check_val_every_n_epoch=None,
        limit_val_batches=3, gradient_clip_val=1.0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[checkpoints, *callbacks],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, module


def test_a_tiny_model_learns_a_repeating_text():
    torch.manual_seed(0)
    text = "the quick brown fox jumps over the lazy dog. " * 20
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(ch) for ch in text])
    model = RNNLM(ModelConfig(len(vocab), hidden_size=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = ids[:-1].view(1, -1)[:, :800], ids[1:].view(1, -1)[:, :800]
    x, y = x.view(8, 100), y.view(8, 100)
    for _ in range(150):
        _, _, loss = model(x, targets=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05  # from ln(28) = 3.3 to near zero


class Recorder(Callback):
    def __init__(self):
        self.before, self.after, self.batches, self.losses, self.expected = [], [], [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before.append(None if module.state is None else tuple(s.clone() for s in module.state))
        self.batches.append(batch)
        with torch.no_grad():  # the state this batch should carry on, from the weights it sees
            self.expected.append(module.model(batch[0], module.state)[1])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(tuple(s.clone() for s in module.state))
        self.losses.append(outputs["loss"].item())


def equal(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_the_state_is_carried_detached_across_batches(cell, small_corpus, tmp_path):
    rec = Recorder()
    fit(small_corpus, tmp_path, max_steps=3, callbacks=[rec], cell=cell)
    assert rec.before[0] is None  # the epoch starts from the zero state
    assert len(rec.after[0]) == {"rnn": 1, "lstm": 2}[cell]  # (h,) or (h, c)
    for k in (1, 2):
        assert equal(rec.before[k], rec.after[k - 1])
        assert not any(s.requires_grad for s in rec.after[k])
    for expected, after in zip(rec.expected, rec.after, strict=True):
        for x, y in zip(expected, after, strict=True):
            assert torch.allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_resume_continues_exactly_where_it_stopped(cell, small_corpus, tmp_path):
    straight = Recorder()
    _, full = fit(small_corpus, tmp_path / "a", max_steps=20, callbacks=[straight], cell=cell)
    resumed = Recorder()
    trainer, module = fit(small_corpus, tmp_path / "b", max_steps=20, callbacks=[resumed], cell=cell,
                          ckpt_path=tmp_path / "a" / "ckpt" / "step=10.ckpt")
    assert trainer.global_step == 20 and len(resumed.losses) == 10
    assert torch.equal(resumed.batches[0][0], straight.batches[10][0])  # the same next batch
    assert equal(resumed.before[0], straight.after[9])  # the carried state came back too: h, and the LSTM's c
    assert resumed.losses == pytest.approx(straight.losses[10:], rel=1e-5)
    for (name, p), q in zip(full.named_parameters(), module.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name  # same optimiser state, same schedule


def test_a_checkpoint_of_another_model_is_refused_on_resume(small_corpus, tmp_path):
    fit(small_corpus, tmp_path, max_steps=10)
    with pytest.raises(RnnlmError, match=r"another model \(hidden_size 32 -> 48\); resume with the options"):
        fit(small_corpus, tmp_path, max_steps=20, hidden_size=48, ckpt_path=tmp_path / "ckpt" / "last.ckpt")


class Diverge(Callback):
    """Poisons a weight after step 14, as a run whose updates blew up."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 14:
            with torch.no_grad():
                module.model.W[0].fill_(math.inf)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small_corpus, tmp_path):
    with pytest.raises(RnnlmError, match=r"loss became nan at step 14; .* last good checkpoint is kept"):
        fit(small_corpus, tmp_path, max_steps=30, callbacks=[Diverge()])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt", "step=10.ckpt"]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_a_checkpoint_from_before_the_state_was_a_tuple_resumes(small_corpus, tmp_path):
    """Such a checkpoint holds the carried h as "hidden" (one tensor) and no cell in its hyperparameters."""
    straight = Recorder()
    fit(small_corpus, tmp_path / "a", max_steps=10, callbacks=[straight])
    checkpoint = torch.load(tmp_path / "a" / "ckpt" / "step=10.ckpt", weights_only=False)
    checkpoint["rnnlm"]["hidden"] = checkpoint["rnnlm"].pop("state")[0]
    del checkpoint["hyper_parameters"]["cell"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    resumed = Recorder()
    fit(small_corpus, tmp_path / "b", max_steps=11, callbacks=[resumed], ckpt_path=tmp_path / "old.ckpt")
    assert equal(resumed.before[0], straight.after[9])
