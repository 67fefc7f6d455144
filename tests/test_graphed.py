"""The training step as one CUDA graph (rnnlm.graphed, --model.cuda_graph) and the precision options.

On CPU: auto trains eagerly as before, true is refused in one line, and the graphed module's own step (forced on,
where it runs eagerly) equals Lightning's, clipping included, and resumes either way. On CUDA (skipped without a
GPU): graphed and eager steps agree, resume is exact, a NaN is caught, and a batch of another shape runs eagerly.
"""

import contextlib
import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy

from conftest import relative_error, run_rnnlm
from rnnlm import graphed
from rnnlm.data import RNNLMDataModule
from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.module import RNNLMModule
from test_training import Diverge

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def fit(corpus, root, max_steps=20, ckpt_path=None, callbacks=(), accelerator="cpu", clip=1.0, algorithm="norm",
        **model):
    """A small run (H=32, B=4, T=16) with a checkpoint at every validation (every 10 steps); its losses and module."""
    L.seed_everything(0, verbose=False)
    dm = RNNLMDataModule(corpus=str(corpus), batch_size=4, seq_len=16, data_dir=str(root / "data"))
    module = RNNLMModule(vocab_size=dm.tokenizer.vocab_size, **{"hidden_size": 32, "warmup_steps": 2,
                                                               "sample_chars": 0, **model})
    losses = Losses()
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", filename="{step}", save_top_k=-1, save_last=True)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_steps=max_steps, val_check_interval=10, check_val_every_n_epoch=None,
        limit_val_batches=3, gradient_clip_val=clip, gradient_clip_algorithm=algorithm, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoints, losses, *callbacks],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return SimpleNamespace(trainer=trainer, module=module, losses=losses.losses)


def assert_same_run(got, want, rel=1e-5):
    assert got.trainer.global_step == want.trainer.global_step
    assert got.losses == pytest.approx(want.losses, rel=rel)
    for (name, p), q in zip(got.module.named_parameters(), want.module.parameters(), strict=True):
        assert relative_error(p, q) <= rel, name


@pytest.fixture
def forced(monkeypatch):
    """The graphed module's own step on CPU, where it runs eagerly: rnnlm.graphed says nothing is lacking."""
    monkeypatch.setattr(graphed, "refusal", lambda trainer, optimizer: None)


# ----------------------------------------------------------------------------- on CPU


def test_auto_trains_eagerly_on_the_cpu_as_false_does(small_corpus, tmp_path):
    auto = fit(small_corpus, tmp_path / "auto", max_steps=12, cuda_graph="auto")
    eager = fit(small_corpus, tmp_path / "false", max_steps=12, cuda_graph="false")
    assert auto.module.graphed is None and eager.module.graphed is None
    assert auto.losses == eager.losses and len(auto.losses) == 12
    for p, q in zip(auto.module.parameters(), eager.module.parameters(), strict=True):
        assert torch.equal(p, q)


def test_true_without_one_cuda_device_is_refused_in_one_line(small_corpus, tmp_path):
    with pytest.raises(RnnlmError, match=r"^--model.cuda_graph true needs one CUDA device without DDP .* on cpu; "):
        fit(small_corpus, tmp_path, max_steps=2, cuda_graph="true")
    done = run_rnnlm("fit", "--config", "configs/tiny.yaml", "--model.cuda_graph", "true",
                     "--data.corpus", str(small_corpus), "--data.data_dir", str(tmp_path / "data"),
                     "--trainer.default_root_dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --model.cuda_graph true needs one CUDA device")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("optimizer, trainer, lacking", [
    ("adagrad", {}, "--model.optimizer adamw (torch's Adagrad has no capturable step)"),
    ("adamw", {"precision_plugin": SimpleNamespace(scaler=object()), "precision": "16-mixed"},
     "a precision without loss scaling (32-true or bf16-mixed), not --trainer.precision 16-mixed"),
    ("adamw", {"accumulate_grad_batches": 4}, "--trainer.accumulate_grad_batches 1, not 4"),
])
def test_what_a_graph_needs_besides_one_cuda_device_is_named(optimizer, trainer, lacking):
    trainer = SimpleNamespace(**{"strategy": SingleDeviceStrategy(torch.device("cuda", 0)), "precision": "32-true",
                                 "precision_plugin": SimpleNamespace(), "accumulate_grad_batches": 1, **trainer})
    assert graphed.refusal(trainer, optimizer).startswith(lacking)
    assert graphed.resolve("auto", trainer, optimizer) is False
    with pytest.raises(RnnlmError, match="^" + re.escape(f"--model.cuda_graph true needs {lacking}; ")):
        graphed.resolve("true", trainer, optimizer)
    assert graphed.resolve("false", trainer, optimizer) is False
    whole = SimpleNamespace(**{**vars(trainer), "precision_plugin": SimpleNamespace(), "accumulate_grad_batches": 1})
    assert graphed.refusal(whole, "adamw") is None and graphed.resolve("auto", whole, "adamw") is True


def test_bad_options_are_named():
    with pytest.raises(RnnlmError, match=r"unknown cuda_graph 'yes': use one of auto, true, false \(--model.cuda_gr"):
        RNNLMModule(vocab_size=10, cuda_graph="yes")
    with pytest.raises(RnnlmError, match=r"unknown float32_matmul_precision 'tf32': use one of highest, high, medium"):
        RNNLMModule(vocab_size=10, float32_matmul_precision="tf32")
    assert RNNLMModule(vocab_size=10, cuda_graph=True).hparams.cuda_graph == "true"  # YAML's `true` is a bool


def test_the_matmul_precision_is_set_at_fit_start(small_corpus, tmp_path):
    before = torch.get_float32_matmul_precision()
    try:
        fit(small_corpus, tmp_path, max_steps=1, float32_matmul_precision="medium")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("clip, algorithm", [(0.05, "norm"), (0.002, "value"), (None, None)])
def test_the_graphed_modules_step_equals_lightnings_and_clips_as_the_trainer_says(clip, algorithm, forced,
                                                                                   small_corpus, tmp_path):
    own = fit(small_corpus, tmp_path / "own", clip=clip, algorithm=algorithm, cuda_graph="true")
    assert own.module.graphed is not None and own.trainer.global_step == 20
    eager = fit(small_corpus, tmp_path / "eager", clip=clip, algorithm=algorithm, cuda_graph="false")
    assert eager.module.graphed is None
    assert_same_run(own, eager)
    assert own.trainer.optimizers[0].param_groups[0]["lr"] == eager.trainer.optimizers[0].param_groups[0]["lr"]
    if clip is not None:  # the clip binds: unclipped steps end elsewhere (AdamW undoes most of a gradient's scale,
        unclipped = fit(small_corpus, tmp_path / "unclipped", clip=None, cuda_graph="false")  # so by 100x the 1e-5)
        params = zip(own.module.parameters(), unclipped.module.parameters(), strict=True)
        assert max(relative_error(p, q) for p, q in params) > 1e-3


def test_a_graphed_runs_checkpoint_resumes_eagerly_and_back(forced, small_corpus, tmp_path):
    runs = {mode: fit(small_corpus, tmp_path / mode, cuda_graph=mode) for mode in ("true", "false")}
    saved = torch.load(tmp_path / "true" / "ckpt" / "step=10.ckpt", weights_only=False)
    assert all(group["capturable"] is False for group in saved["optimizer_states"][0]["param_groups"])
    for mode, other in [("true", "false"), ("false", "true")]:  # each run's checkpoint, resumed the other way
        resumed = fit(small_corpus, tmp_path / f"{mode}-{other}", cuda_graph=other,
                      ckpt_path=tmp_path / mode / "ckpt" / "step=10.ckpt")
        assert resumed.trainer.global_step == 20
        assert resumed.losses == pytest.approx(runs[mode].losses[10:], rel=1e-5)
        for p, q in zip(resumed.module.parameters(), runs[mode].module.parameters(), strict=True):
            assert relative_error(p, q) <= 1e-5


def test_a_non_finite_loss_stops_the_graphed_module_naming_the_step(forced, small_corpus, tmp_path):
    with pytest.raises(RnnlmError, match=r"loss became nan at step 14; .* last good checkpoint is kept"):
        fit(small_corpus, tmp_path, max_steps=30, callbacks=[Diverge()], cuda_graph="true")
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 10


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_under_autocast_every_layer_recurs_in_its_precision(cell):
    """Layer 0's input drive is a float32 column lookup; the recurrence still runs in bf16, as autograd's would."""
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(11, 16, 1, cell=cell))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state, loss = model(torch.randint(11, (2, 5)), None, torch.randint(11, (2, 5)))
    assert all(s.dtype == torch.bfloat16 for s in state) and loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    _, state, _ = model(torch.randint(11, (2, 5)))
    assert all(s.dtype == torch.float32 for s in state)


# ----------------------------------------------------------------------------- on CUDA


@pytest.mark.cuda
@cuda
def test_graphed_and_eager_training_agree_on_cuda(small_corpus, tmp_path):
    graph = fit(small_corpus, tmp_path / "graph", max_steps=5, accelerator="gpu", cuda_graph="true")
    assert graph.module.graphed.graph is not None  # captured at the first step, replayed at the next four
    eager = fit(small_corpus, tmp_path / "eager", max_steps=5, accelerator="gpu", cuda_graph="false")
    assert eager.module.graphed is None
    assert_same_run(graph, eager)


@pytest.mark.cuda
@cuda
def test_resume_with_graphs_is_exact(small_corpus, tmp_path):
    straight = fit(small_corpus, tmp_path / "a", accelerator="gpu", cuda_graph="true")
    resumed = fit(small_corpus, tmp_path / "b", accelerator="gpu", cuda_graph="true",
                  ckpt_path=tmp_path / "a" / "ckpt" / "step=10.ckpt")
    assert resumed.trainer.global_step == 20
    assert resumed.losses == pytest.approx(straight.losses[10:], rel=1e-5)
    for p, q in zip(resumed.module.parameters(), straight.module.parameters(), strict=True):
        assert relative_error(p, q) <= 1e-5


@pytest.mark.cuda
@cuda
def test_a_nan_in_a_replayed_step_is_caught(small_corpus, tmp_path):
    with pytest.raises(RnnlmError, match=r"loss became nan at step 14; .* last good checkpoint is kept"):
        fit(small_corpus, tmp_path, max_steps=30, callbacks=[Diverge()], accelerator="gpu", cuda_graph="true")
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 10


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("cell, dtype, rel", [
    ("rnn", None, 1e-5), ("gru", None, 1e-5), ("lstm", None, 1e-5), ("rnn", torch.bfloat16, 1e-2)])
def test_a_batch_of_another_shape_runs_eagerly_and_the_graph_goes_on(cell, dtype, rel):
    """Batches of (4, 16), one of (4, 8), then (4, 16) again: replays around an eager step, against eager steps."""
    torch.manual_seed(0)
    shapes = [(4, 16)] * 3 + [(4, 8)] + [(4, 16)] * 2
    batches = [(torch.randint(20, shape, device="cuda"), torch.randint(20, shape, device="cuda")) for shape in shapes]
    runs = []
    for graph in (True, False):
        torch.manual_seed(1)
        model = RNNLM(ModelConfig(20, 32, 2, cell=cell)).cuda()
        step = graphed.GraphedStep(model, torch.optim.AdamW(model.parameters(), lr=1e-2), 1.0, "norm")
        state, losses = None, []
        for x, y in batches:
            with torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext():
                loss, state = step(x, y, state) if graph else step.eager(x, y, state)
            losses.append(loss.item())
        runs.append((losses, [p.detach().clone() for p in model.parameters()], state, step))
    (losses, weights, state, step), (want_losses, want_weights, want_state, _) = runs
    assert step.graph is not None and step.static["x"].shape == (4, 16)
    assert losses == pytest.approx(want_losses, rel=rel)
    for got, want in zip([*weights, *state], [*want_weights, *want_state], strict=True):
        assert relative_error(got.float(), want.float()) <= rel
