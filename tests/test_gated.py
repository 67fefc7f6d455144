"""The gated cells (rnnlm.gated): finite differences, autograd, torch's nn.GRU / nn.LSTM, step against forward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import relative_error, run_rnnlm
from rnnlm.errors import RnnlmError
from rnnlm.gated import gru_manual, lstm_manual
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.module import RNNLMModule

V, H, B, T = 11, 8, 3, 7
CELLS = ["gru", "lstm"]
TORCH = {"gru": (nn.GRU, "rzn"), "lstm": (nn.LSTM, "ifgo")}  # torch's layer and its gate order in the weights


def random_state(model: RNNLM, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(model.num_layers, B, H, dtype=dtype) for _ in model.state_names)


@pytest.mark.parametrize("steps", [1, 5])
def test_gradcheck(steps):
    torch.manual_seed(0)
    d = {"dtype": torch.float64, "requires_grad": True}
    a_x, h0, c0 = torch.randn(steps, B, 3 * 4, **d), torch.randn(B, 4, **d), torch.randn(B, 4, **d)
    W, b_hn = (0.5 * torch.randn(3 * 4, 4, dtype=torch.float64)).requires_grad_(), torch.randn(4, **d)
    # the recurrences consume a_x (its buffer becomes the gates'), so each call gets its own copy
    assert torch.autograd.gradcheck(lambda a_x, *rest: gru_manual(a_x.clone(), *rest), (a_x, h0, W, b_hn))
    a_x, W = torch.randn(steps, B, 4 * 4, **d), (0.5 * torch.randn(4 * 4, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a_x, *rest: lstm_manual(a_x.clone(), *rest), (a_x, h0, c0, W))
    # an unused output gets no gradient from autograd: the backward takes it as zero
    assert torch.autograd.gradcheck(lambda a_x, *rest: lstm_manual(a_x.clone(), *rest)[1], (a_x, h0, c0, W))


def gradients(model: RNNLM, input_ids, targets, state=None) -> dict[str, torch.Tensor]:
    """∂loss/∂θ for every parameter, and ∂loss/∂state when a state is given."""
    model.zero_grad()
    if state is not None:
        state = tuple(s.clone().requires_grad_() for s in state)
    _, last, loss = model(input_ids, state, targets)
    (loss + sum(s.square().sum() for s in last)).backward()  # the last state feeds the loss too, as in the next window
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    for name, s in zip(model.state_names, state or (), strict=False):
        grads[name] = s.grad
    return grads


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_manual_gradients_equal_autograd(cell, num_layers, carried):
    torch.manual_seed(0)
    manual = RNNLM(ModelConfig(V, H, num_layers, cell=cell, bptt="manual")).double()
    reference = RNNLM(ModelConfig(V, H, num_layers, cell=cell, bptt="autograd")).double()
    reference.load_state_dict(manual.state_dict())
    input_ids, targets = torch.randint(V, (B, T)), torch.randint(V, (B, T))
    state = random_state(manual, torch.float64) if carried else None
    got, want = gradients(manual, input_ids, targets, state), gradients(reference, input_ids, targets, state)
    assert got.keys() == want.keys()
    assert len(want) == 2 + num_layers * {"gru": 10, "lstm": 12}[cell] + carried * len(manual.state_names)
    for name in want:
        assert relative_error(got[name], want[name]) <= 1e-6, name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", CELLS)
def test_manual_gradients_equal_autograd_on_cuda(cell):
    torch.manual_seed(0)
    manual = RNNLM(ModelConfig(V, H, 2, cell=cell, bptt="manual")).cuda()
    reference = RNNLM(ModelConfig(V, H, 2, cell=cell, bptt="autograd")).cuda()
    reference.load_state_dict(manual.state_dict())
    input_ids, targets = torch.randint(V, (B, T), device="cuda"), torch.randint(V, (B, T), device="cuda")
    state = tuple(s.cuda() for s in random_state(manual))
    got, want = gradients(manual, input_ids, targets, state), gradients(reference, input_ids, targets, state)
    for name in want:
        assert relative_error(got[name], want[name]) <= 1e-4, name


def torch_twin(model: RNNLM, cell: str) -> tuple[nn.Module, nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]]:
    """nn.GRU or nn.LSTM + Linear holding the model's weights, gate by gate in torch's order, and the pairs of
    (our parameter, torch's slice of the same weight) whose gradients must agree."""
    Layer, order = TORCH[cell]
    rnn, head = Layer(V, H, model.num_layers).double(), nn.Linear(H, V).double()
    pairs = [(model.V, head.weight), (model.c, head.bias)]
    with torch.no_grad():
        for l, ours in enumerate(model.layers):
            weights = {name: getattr(rnn, f"{name}_l{l}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            weights["bias_hh"].zero_()
            for k, gate in enumerate(order):
                rows = slice(k * H, (k + 1) * H)  # gate k of torch's stacked weights
                for letter, name in (("U", "weight_ih"), ("W", "weight_hh"), ("b", "bias_ih")):
                    weights[name][rows] = getattr(ours, f"{letter}_{gate}")
                    pairs.append((getattr(ours, f"{letter}_{gate}"), weights[name], rows))
                if cell == "gru" and gate in "rz":  # torch adds bias_hh to bias_ih in r and z: the same gradient
                    pairs.append((getattr(ours, f"b_{gate}"), weights["bias_hh"], rows))
            if cell == "gru":  # b_hn is bias_hh's candidate part, inside the reset gate
                weights["bias_hh"][2 * H :] = ours.b_hn
                pairs.append((ours.b_hn, weights["bias_hh"], slice(2 * H, 3 * H)))
        head.weight.copy_(model.V)
        head.bias.copy_(model.c)
    return rnn, head, pairs


@pytest.mark.parametrize("bptt", ["manual", "autograd"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_outputs_and_gradients_equal_torch(cell, carried, num_layers, bptt):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(V, H, num_layers, cell=cell, bptt=bptt)).double()
    rnn, head, pairs = torch_twin(model, cell)
    input_ids, targets = torch.randint(V, (B, T)), torch.randint(V, (B, T))
    state = random_state(model, torch.float64) if carried else model.init_state(B)

    logits, last, loss = model(input_ids, state if carried else None, targets)
    x = F.one_hot(input_ids.t(), V).double()  # (T, B, V): the one-hot x(t) of the math
    hs, twin_last = rnn(x, state if cell == "lstm" else state[0])  # (T, B, H); h or (h, c), (L, B, H) each
    twin_logits = head(hs).transpose(0, 1)  # (B, T, V)
    twin_loss = F.cross_entropy(twin_logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(logits, twin_logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, twin_last if cell == "lstm" else (twin_last,), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, twin_loss, rtol=1e-10, atol=1e-12)

    loss.backward()
    twin_loss.backward()
    for ours, theirs, *rows in pairs:
        torch.testing.assert_close(ours.grad, theirs.grad[rows[0]] if rows else theirs.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bptt", ["manual", "autograd"])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_equals_t_steps(cell, bptt):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(V, H, 2, cell=cell, bptt=bptt))
    input_ids, state = torch.randint(V, (B, T)), random_state(model)
    with torch.no_grad():
        logits, last, _ = model(input_ids, state)
        step_state, step_logits = state, []
        for t in range(T):
            logits_t, *step_state = model.step(input_ids[:, t], *step_state)  # (B, V), (L, B, H) each
            step_logits.append(logits_t)
    assert len(last) == len(step_state) == {"gru": 1, "lstm": 2}[cell]
    torch.testing.assert_close(logits, torch.stack(step_logits, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last, tuple(step_state), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", *CELLS])
def test_manual_runs_under_autocast(cell):
    """Under bf16 autocast the recurrence runs in bf16 at every layer while W stays float32: the gradients
    agree with autograd's to bf16's precision."""
    torch.manual_seed(0)
    manual = RNNLM(ModelConfig(V, H, 2, cell=cell, bptt="manual"))
    reference = RNNLM(ModelConfig(V, H, 2, cell=cell, bptt="autograd"))
    reference.load_state_dict(manual.state_dict())
    input_ids, targets = torch.randint(V, (B, T)), torch.randint(V, (B, T))
    for model in (manual, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, _, loss = model(input_ids, None, targets)
        loss.backward()
    for got, want in zip(manual.parameters(), reference.parameters(), strict=True):
        assert relative_error(got.grad, want.grad) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_a_tiny_model_learns_a_repeating_text(cell):
    torch.manual_seed(0)
    text = "the quick brown fox jumps over the lazy dog. " * 20
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(ch) for ch in text])
    model = RNNLM(ModelConfig(len(vocab), hidden_size=64, cell=cell))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = ids[:800].view(8, 100), ids[1:801].view(8, 100)
    for _ in range(150):
        _, _, loss = model(x, targets=y)
        if loss.item() < 0.05:  # from ln(28) = 3.3 to near zero
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_initialisation():
    torch.manual_seed(0)
    for cell in CELLS:
        layers = RNNLM(ModelConfig(V, H, 2, cell=cell)).layers
        for l, layer in enumerate(layers):
            for name, p in layer.named_parameters():
                if p.dim() == 2:  # U_* (fan-in V at layer 0, H above), W_* (fan-in H)
                    assert p.abs().max() <= (V if l == 0 and name.startswith("U") else H) ** -0.5, name
                else:
                    assert torch.equal(p, torch.full_like(p, 1.0 if name == "b_f" else 0.0)), name  # b_f = 1


def test_a_nonlinearity_with_a_gated_cell_is_refused():
    with pytest.raises(ValueError, match="^nonlinearity 'relu' is for cell rnn only: the lstm cell has its own"):
        ModelConfig(V, H, nonlinearity="relu", cell="lstm")
    with pytest.raises(RnnlmError, match=r"^--model\.nonlinearity 'relu' is for cell rnn only: the gru cell"):
        RNNLMModule(V, H, nonlinearity="relu", cell="gru")
    with pytest.raises(RnnlmError, match=r"^--model\.cell must be one of \['rnn', 'gru', 'lstm'\], got 'transformer'"):
        RNNLMModule(V, H, cell="transformer")


@pytest.mark.slow
def test_rnnlm_fit_trains_an_lstm(small_corpus, tmp_path):
    result = run_rnnlm("fit", "--config", "configs/tiny.yaml", "--model.cell", "lstm", "--model.num_layers", "2",
                       "--trainer.max_steps", "10", "--data.corpus", str(small_corpus), "--data.data_dir",
                       str(tmp_path / "data"), "--trainer.default_root_dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["hyper_parameters"]["cell"] == "lstm" and last["global_step"] == 10
    h, c = last["rnnlm"]["state"]  # the carried h and c, (L, B, H) each
    assert h.shape == c.shape == (2, 4, 32)
    model = RNNLM.from_checkpoint(last)
    assert model.state_names == ("hidden", "cell") and model.layers[1].U_i.shape == (32, 32)
