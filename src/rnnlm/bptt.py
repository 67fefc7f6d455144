"""Back-propagation through time written by hand: the recurrence of one layer as a torch.autograd.Function.

Forward runs h(t) = f(a_x(t) + W h(t-1)) for t = 1..T without building a graph and keeps h(0..T).
Backward runs the equations of docs/design.md §1 from t = T down to 1, written for rows (one per batch element,
so the design's Wᵀ v is v W here), with da(t) = ∂L/∂a(t):

    ∂L/∂h(t) = ∂L/∂h(t)|above + da(t+1) W       |above: from the output layer or the next layer; no da(T+1)
    da(t)    = f'(a(t)) ⊙ ∂L/∂h(t)             f' = 1 - h(t)² for tanh, [h(t) > 0] for relu

so the loop holds only the (B, H) x (H, H) product. Then ∂L/∂W = Σ_t da(t)ᵀ h(t-1) is one matmul over all
T·B rows, ∂L/∂h(0) = da(1) W, and ∂L/∂a_x = da, from which autograd gets U and b in one batched op each.
"""

import torch
from torch.autograd.function import once_differentiable

IN_PLACE = {"tanh": torch.tanh_, "relu": torch.relu_}  # f, applied to a(t) where it lies


def derivative(h: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """f'(a) from the output h = f(a): 1 - h² for tanh, [h > 0] for relu; a new tensor shaped like h."""
    if nonlinearity == "tanh":
        return torch.addcmul(h.new_ones(()), h, h, value=-1)  # the 1 broadcasts: one pass, one new tensor
    return (h > 0).to(h.dtype)


class Recurrence(torch.autograd.Function):
    """h(1..T) from a_x, h(0) and W; gradients for all three. Use it through recurrence_manual."""

    @staticmethod
    def forward(ctx, a_x: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, nonlinearity: str) -> torch.Tensor:
        T, B, H = a_x.shape
        h = a_x.new_empty(T + 1, B, H)  # h(0..T), one buffer, so h(t-1) for all t is the view h[:-1]
        h[0] = h0
        h[1:] = a_x  # each h(t) starts as a_x(t); W h(t-1) is added in place below
        f_, Wt = IN_PLACE[nonlinearity], W.t()
        steps = h.unbind(0)  # T + 1 views (B, H), made once
        for h_prev, h_t in zip(steps[:-1], steps[1:], strict=True):
            f_(h_t.addmm_(h_prev, Wt))  # h(t) = f(a_x(t) + W h(t-1))
        ctx.save_for_backward(h, W)
        ctx.nonlinearity = nonlinearity
        return h[1:]  # (T, B, H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, W = ctx.saved_tensors  # (T + 1, B, H), (H, H)
        grad_h = grad_h.contiguous()  # ∂L/∂h(t)|above: (T, B, H)
        da = derivative(h[1:], ctx.nonlinearity)  # f'(a(t)), turned into da(t) in place: (T, B, H)
        da_steps, grad_steps = da.unbind(0), grad_h.unbind(0)
        dh = torch.empty_like(grad_steps[0])  # ∂L/∂h(t): (B, H)
        da_steps[-1].mul_(grad_steps[-1])  # t = T: nothing flows back from T + 1
        for t in range(len(da_steps) - 2, -1, -1):  # index t holds step t + 1
            torch.addmm(grad_steps[t], da_steps[t + 1], W, out=dh)  # ∂L/∂h(t) = ∂L/∂h(t)|above + da(t+1) W
            da_steps[t].mul_(dh)  # da(t) = f'(a(t)) ⊙ ∂L/∂h(t)
        dW = dh0 = None
        if ctx.needs_input_grad[2]:
            dW = da.flatten(0, 1).t() @ h[:-1].flatten(0, 1)  # Σ_t da(t)ᵀ h(t-1): (H, T·B) x (T·B, H)
        if ctx.needs_input_grad[1]:
            dh0 = da_steps[0] @ W  # (B, H)
        return da, dh0, dW, None


def recurrence_manual(a_x: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """h(t) = f(a_x(t) + W h(t-1)) for t = 1..T with the hand-written backward.

    a_x: (T, B, H) the input projection U x + b; h0: (B, H); W: (H, H). Returns h: (T, B, H).
    """
    if nonlinearity not in IN_PLACE:
        raise ValueError(f"nonlinearity must be one of {sorted(IN_PLACE)}, got {nonlinearity!r}")
    dtype = recurrence_dtype(a_x)
    return Recurrence.apply(a_x.to(dtype), h0.to(dtype), W.to(dtype), nonlinearity)


def recurrence_dtype(a_x: torch.Tensor) -> torch.dtype:
    """The precision the recurrence runs in: autocast's (bf16 under --trainer.precision bf16-mixed) where autocast is
    on, as autograd's addmm would compute W h(t-1) there, at every layer (at layer 0 a_x, a column lookup, comes in
    float32, and only its cast puts the loop's (B, H) x (H, H) products on the bf16 path); else a_x's own."""
    device = a_x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else a_x.dtype
