"""RNNLM against torch's own nn.RNN (weights copied across), and forward against step."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.model import RNNLM, ModelConfig

V, H, B, T = 11, 8, 3, 7
SETTINGS = [(L, f, bptt) for L in (1, 2) for f in ("tanh", "relu") for bptt in ("manual", "autograd")]


def torch_twin(model: RNNLM) -> tuple[nn.RNN, nn.Linear]:
    """nn.RNN + Linear holding the model's weights: weight_ih = U, weight_hh = W, bias_ih = b, bias_hh = 0."""
    rnn = nn.RNN(V, H, model.num_layers, nonlinearity=model.nonlinearity).double()
    head = nn.Linear(H, V).double()
    with torch.no_grad():
        for l in range(model.num_layers):
            getattr(rnn, f"weight_ih_l{l}").copy_(model.U[l])
            getattr(rnn, f"weight_hh_l{l}").copy_(model.W[l])
            getattr(rnn, f"bias_ih_l{l}").copy_(model.b[l])
            getattr(rnn, f"bias_hh_l{l}").zero_()
        head.weight.copy_(model.V)
        head.bias.copy_(model.c)
    return rnn, head


@pytest.mark.parametrize("num_layers,nonlinearity,bptt", SETTINGS)
def test_outputs_and_gradients_equal_nn_rnn(num_layers, nonlinearity, bptt):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(V, H, num_layers, nonlinearity, bptt=bptt)).double()
    rnn, head = torch_twin(model)
    input_ids, targets = torch.randint(V, (B, T)), torch.randint(V, (B, T))
    hidden = torch.randn(num_layers, B, H, dtype=torch.float64)

    logits, (last_hidden,), loss = model(input_ids, (hidden,), targets)
    x = F.one_hot(input_ids.t(), V).double()  # (T, B, V): the one-hot x(t) of the math
    hs, twin_hidden = rnn(x, hidden)  # (T, B, H), (L, B, H)
    twin_logits = head(hs).transpose(0, 1)  # (B, T, V)
    twin_loss = F.cross_entropy(twin_logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(logits, twin_logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last_hidden, twin_hidden, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, twin_loss, rtol=1e-10, atol=1e-12)

    loss.backward()
    twin_loss.backward()
    pairs = [(model.V, head.weight), (model.c, head.bias)]
    for l in range(num_layers):
        pairs += [(model.U[l], getattr(rnn, f"weight_ih_l{l}")), (model.W[l], getattr(rnn, f"weight_hh_l{l}"))]
        pairs += [(model.b[l], getattr(rnn, f"bias_ih_l{l}")), (model.b[l], getattr(rnn, f"bias_hh_l{l}"))]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bptt", ["manual", "autograd"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_forward_equals_t_steps(nonlinearity, bptt):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(V, H, 2, nonlinearity, bptt=bptt))
    input_ids, hidden = torch.randint(V, (B, T)), torch.randn(2, B, H)
    with torch.no_grad():
        logits, (last_hidden,), _ = model(input_ids, (hidden,))
        step_hidden, step_logits = hidden, []
        for t in range(T):
            logits_t, step_hidden = model.step(input_ids[:, t], step_hidden)  # (B, V), (L, B, H)
            step_logits.append(logits_t)
    torch.testing.assert_close(logits, torch.stack(step_logits, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last_hidden, step_hidden, rtol=1e-5, atol=1e-6)


def test_loss_ignores_targets_of_minus_100():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(V, H))
    input_ids, targets = torch.randint(V, (B, T)), torch.randint(V, (B, T))
    logits, _, _ = model(input_ids)
    masked = targets.clone()
    masked[:, ::2] = -100
    _, _, loss = model(input_ids, targets=masked)
    kept = masked != -100
    torch.testing.assert_close(loss, F.cross_entropy(logits[kept], targets[kept]))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unit_init_draws_the_first_layers_input_matrices_in_plus_minus_one(cell):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(65, 64, num_layers=2, cell=cell, init="unit"))
    first = [model.U[0]] if cell == "rnn" else [getattr(model.layers[0], f"U_{k}") for k in model.layers[0].GATES]
    for weight in first:  # 64 x 65 draws of U(-1, 1): the largest is within 0.01 of 1
        assert 0.99 < weight.abs().max() <= 1
    rest = [p for n, p in model.named_parameters() if p.dim() == 2 and all(p is not w for w in first)]
    assert len(rest) >= 3
    for weight in rest:  # the seed's ±1/√fan-in, unchanged
        assert weight.abs().max() <= 1 / weight.shape[1] ** 0.5


@pytest.mark.parametrize("init", ["fan_in", "unit"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_input_scale_multiplies_the_first_layers_input_matrices_alone(cell, init):
    models = []
    for scale in (1.0, 3.0):
        torch.manual_seed(0)
        models.append(RNNLM(ModelConfig(65, 64, num_layers=2, cell=cell, init=init, input_scale=scale)))
    plain, scaled = (dict(m.named_parameters()) for m in models)
    first = {"U.0"} if cell == "rnn" else {f"layers.0.U_{k}" for k in models[0].layers[0].GATES}
    assert first <= plain.keys()
    for name, weight in plain.items():  # the same draws: only the first layer's input matrices are 3x
        torch.testing.assert_close(scaled[name], 3 * weight if name in first else weight, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), True])
def test_config_refuses_an_input_scale_that_is_not_a_positive_number(scale):
    with pytest.raises(ValueError, match=rf"input_scale must be a number > 0 .*got {re.escape(repr(scale))}"):
        ModelConfig(V, input_scale=scale)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_input_dropout_drops_u_x_in_training_only(cell):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(V, H, cell=cell, input_dropout=0.5)).double()
    x = torch.randint(V, (B, T))
    plain = RNNLM(ModelConfig(V, H, cell=cell)).double()
    plain.load_state_dict(model.state_dict())
    model.eval()
    torch.testing.assert_close(model(x)[0], plain(x)[0], rtol=0, atol=0)  # eval: no dropout
    model.train()
    torch.manual_seed(1)
    dropped = model(x)[0]
    assert (dropped - plain(x)[0]).abs().max() > 1e-3
    # Training with input dropout: half of the units of U x zeroed and the rest doubled, the same units of a
    # stream at every step of the window (one (1, B, H) mask).
    torch.manual_seed(1)
    mask = torch.empty(1, B, H, dtype=torch.float64).bernoulli_(0.5) / 0.5  # the draw dropout made
    if cell == "rnn":
        a_x = (plain.U[0].t()[x.t()] * mask + plain.b[0])
        hs = torch.stack(list(_tanh_scan(a_x, plain.W[0])))
        torch.testing.assert_close(dropped, F.linear(hs, plain.V, plain.c).transpose(0, 1))


def _tanh_scan(a_x, W):
    h = torch.zeros(a_x.shape[1], a_x.shape[2], dtype=a_x.dtype)
    for a_t in a_x:
        h = torch.tanh(a_t + h @ W.t())
        yield h


def test_config_names_a_bad_init_or_input_dropout():
    with pytest.raises(ValueError, match=r"init must be one of \['fan_in', 'unit'\]"):
        ModelConfig(V, init="normal")
    with pytest.raises(ValueError, match=r"input_dropout must lie in \[0, 1\), got 1.0"):
        ModelConfig(V, input_dropout=1.0)
