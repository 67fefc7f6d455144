"""The hand-written backward (rnnlm.bptt) against finite differences and against autograd."""

import pytest
import torch

from conftest import relative_error
from rnnlm.bptt import recurrence_manual
from rnnlm.model import RNNLM, ModelConfig

V, H, B, T = 11, 8, 3, 7


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck(nonlinearity):
    torch.manual_seed(0)
    a_x = torch.randn(5, B, 4, dtype=torch.float64, requires_grad=True)  # (T, B, H)
    h0 = torch.randn(B, 4, dtype=torch.float64, requires_grad=True)  # (B, H)
    W = (0.5 * torch.randn(4, 4, dtype=torch.float64)).requires_grad_()  # (H, H)
    assert torch.autograd.gradcheck(lambda a_x, h0, W: recurrence_manual(a_x, h0, W, nonlinearity), (a_x, h0, W))


def test_unknown_nonlinearity_is_refused():
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        recurrence_manual(torch.zeros(2, 1, 3), torch.zeros(1, 3), torch.zeros(3, 3), "sigmoid")


def test_unknown_bptt_is_refused():
    with pytest.raises(ValueError, match="bptt must be one of"):
        RNNLM(ModelConfig(V, H, bptt="numpy"))


def gradients(model: RNNLM, input_ids, targets, hidden=None) -> dict[str, torch.Tensor]:
    """∂loss/∂θ for every parameter (and ∂loss/∂hidden when a hidden state is given)."""
    model.zero_grad()
    if hidden is not None:
        hidden = hidden.clone().requires_grad_()
    _, (last_hidden,), loss = model(input_ids, None if hidden is None else (hidden,), targets)
    (loss + last_hidden.square().sum()).backward()  # the last state feeds the loss too, as in the next window
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    if hidden is not None:
        grads["hidden"] = hidden.grad
    return grads


CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                         reason="needs a CUDA device")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_manual_gradients_equal_autograd(num_layers, carried, nonlinearity, device):
    torch.manual_seed(0)
    manual = RNNLM(ModelConfig(V, H, num_layers, nonlinearity, bptt="manual")).double().to(device)
    reference = RNNLM(ModelConfig(V, H, num_layers, nonlinearity, bptt="autograd")).double().to(device)
    reference.load_state_dict(manual.state_dict())
    input_ids, targets = torch.randint(V, (B, T)).to(device), torch.randint(V, (B, T)).to(device)
    hidden = torch.randn(num_layers, B, H, dtype=torch.float64).to(device) if carried else None
    got, want = gradients(manual, input_ids, targets, hidden), gradients(reference, input_ids, targets, hidden)
    assert got.keys() == want.keys()
    for name in want:
        assert relative_error(got[name], want[name]) <= 1e-6, name


def loss_curve(bptt: str, steps: int = 30) -> list[float]:
    """Train a tiny model on a fixed stream with the hidden state carried, as training does."""
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(V, 16, 2, bptt=bptt))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stream = torch.randint(V, (B, steps * T + 1))  # B streams, consumed T tokens per step
    state, losses = None, []
    for k in range(steps):
        window = stream[:, k * T : (k + 1) * T + 1]
        _, state, loss = model(window[:, :-1], state, window[:, 1:])
        state = tuple(s.detach() for s in state)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_gives_the_same_loss_curve_both_ways():
    manual, reference = loss_curve("manual"), loss_curve("autograd")
    assert manual[-1] < manual[0]
    assert manual == pytest.approx(reference, rel=1e-4)
