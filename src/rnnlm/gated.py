"""The gated layers, GRU and LSTM, written from their equations, each with a hand-written BPTT.

For one layer at time t, with x(t) its input (a token id at layer 0, h of the layer below above it),
σ the logistic sigmoid and ⊙ the elementwise product:

    GRU (torch's and cuDNN's variant: the reset gate scales W_n h + b_hn, so weights copy to nn.GRU one for one)
        r(t) = σ(U_r x(t) + b_r + W_r h(t-1))                            reset gate
        z(t) = σ(U_z x(t) + b_z + W_z h(t-1))                            update gate
        n(t) = tanh(U_n x(t) + b_n + r(t) ⊙ (W_n h(t-1) + b_hn))         candidate
        h(t) = (1 - z(t)) ⊙ n(t) + z(t) ⊙ h(t-1)

    LSTM
        i(t) = σ(U_i x(t) + b_i + W_i h(t-1))                            input gate
        f(t) = σ(U_f x(t) + b_f + W_f h(t-1))                            forget gate
        g(t) = tanh(U_g x(t) + b_g + W_g h(t-1))                         candidate
        o(t) = σ(U_o x(t) + b_o + W_o h(t-1))                            output gate
        c(t) = f(t) ⊙ c(t-1) + i(t) ⊙ g(t)                               the cell state, carried like h
        h(t) = o(t) ⊙ tanh(c(t))

U_*: (H, V) at layer 0 (a column lookup), (H, H) above; W_*: (H, H); b_*: (H,). nn.GRU's bias_ih and bias_hh
both enter r and z as a sum, so one b_r and one b_z say the same; only the candidate's recurrent bias b_hn stands
apart, inside the reset gate. Initialisation as the vanilla cell's: U_*, W_* uniform in [-1/√n, 1/√n] with n
the fan-in, biases zero, except the LSTM's forget-gate bias b_f = 1 (Gers et al. 2000; Jozefowicz et al. 2015):
the cell starts out remembering, so early gradients are not cut by f ≈ 1/2 at every step.

The parameters are per gate, named as above, so a checkpoint, a test or nn.GRU's weights read them by their
names. The time loop needs them side by side: they are stacked once per forward (a (kH, H) copy per window of
T·B rows, about 1/(T·B) of the window's arithmetic), so that the input projection U x + b of all T steps is one
batched op and each step one (B, H) x (H, kH) product plus elementwise work. Stacking per forward rather than
storing stacked weights with per-gate views keeps every name a real parameter (and nn.Module's state_dict, the
optimiser and weight decay see them as such) at no measurable cost. The LSTM stacks [·_i; ·_f; ·_g; ·_o],
torch's order. The GRU stacks W as [W_r; W_z; W_n] but U and b as [·_n; ·_r; ·_z]: then its backward buffer
[da_n, da_r, da_z, ∂L/∂m_n] holds ∂L/∂(U x + b) = [da_n; da_r; da_z] and ∂L/∂m = [da_r; da_z; ∂L/∂m_n] as two
overlapping views, with no copy of either (and its forward splits the product in two, [W_r; W_z] with
U x + b added and W_n with b_hn added, so that U_n x + b_n stays apart for the candidate).

`gru_update` and `lstm_update` are one step of the equations: `RNNLM.step` runs them, and so does the autograd
reference (`bptt="autograd"`) over T steps. `GRURecurrence` and `LSTMRecurrence` are the same recurrence as a
torch.autograd.Function with the backward derived below, written for rows (one per batch element, so W h is
h Wᵀ and the gradient reaching h(t-1) through W is dm W). They keep the gates for the backward in the buffer of
their input a_x, the layer's own projection (gru_manual says why). In both, ∂L/∂h(t) = ∂L/∂h(t)|above + (the terms
from step t+1), "above" being the output layer or the next layer, and everything of a step that does not
depend on ∂L/∂h(t) is computed for all T at once before the backward loop, as coefficients; the loop then
holds one (B, kH) x (kH, H) product and two or three elementwise ops.

    GRU, with m = W h(t-1) + [0; 0; b_hn] = [m_r; m_z; m_n] and δ = ∂L/∂h(t):
        ∂L/∂n    = δ ⊙ (1 - z)                    da_n = ∂L/∂n ⊙ (1 - n²)          =: δ ⊙ A_n
        ∂L/∂z    = δ ⊙ (h(t-1) - n)               da_z = ∂L/∂z ⊙ z (1 - z)         =: δ ⊙ A_z
        ∂L/∂r    = da_n ⊙ m_n                     da_r = ∂L/∂r ⊙ r (1 - r)         =: δ ⊙ A_r
        ∂L/∂m_n  = da_n ⊙ r                                                        =: δ ⊙ A_m
        ∂L/∂h(t-1) = ∂L/∂h(t-1)|above + δ ⊙ z + [da_r; da_z; ∂L/∂m_n] W
        ∂L/∂W    = Σ_t [da_r; da_z; ∂L/∂m_n]ᵀ h(t-1)      ∂L/∂b_hn = Σ_t ∂L/∂m_n      ∂L/∂(U x + b) = [da_n; da_r; da_z]

    LSTM, with δ = ∂L/∂h(t) and γ = ∂L/∂c(t):
        γ        = δ ⊙ o ⊙ (1 - tanh²c(t)) + γ(t+1) ⊙ f(t+1)                       (no t+1 term at T: ∂L/∂c(T) is given)
        da_o = δ ⊙ tanh c(t) ⊙ o (1 - o)          da_i = γ ⊙ g ⊙ i (1 - i)
        da_f = γ ⊙ c(t-1) ⊙ f (1 - f)             da_g = γ ⊙ i ⊙ (1 - g²)
        ∂L/∂h(t-1) = ∂L/∂h(t-1)|above + da W       with da = [da_i; da_f; da_g; da_o]
        ∂L/∂c(0) = γ(1) ⊙ f(1)                    ∂L/∂W = Σ_t da(t)ᵀ h(t-1)        ∂L/∂(U x + b) = da

∂L/∂W is one matmul over all T·B rows after the loop; autograd takes the rest (U_*, b_*, the layers below)
from ∂L/∂(U x + b), in one batched op per layer.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from rnnlm.bptt import recurrence_dtype

# ----------------------------------------------------------------------------- one step: the equations


def gru_update(a_x: torch.Tensor, h: torch.Tensor, W: torch.Tensor, b_hn: torch.Tensor) -> torch.Tensor:
    """h(t) from a_x = [U_n x + b_n; U_r x + b_r; U_z x + b_z] (..., 3H), h = h(t-1) (..., H),
    W = [W_r; W_z; W_n] (3H, H) (the orders of GRULayer.INPUT and GATES)."""
    a_n, a_r, a_z = a_x.chunk(3, dim=-1)  # (..., H) each
    m_r, m_z, m_n = F.linear(h, W).chunk(3, dim=-1)  # W h for all gates in one product: (..., H) each
    r = torch.sigmoid(a_r + m_r)
    z = torch.sigmoid(a_z + m_z)
    n = torch.tanh(a_n + r * (m_n + b_hn))
    return (1 - z) * n + z * h  # (..., H)


def lstm_update(
    a_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, W: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """h(t), c(t) from a_x = [U_i x + b_i; U_f x + b_f; U_g x + b_g; U_o x + b_o] (..., 4H), h = h(t-1),
    c = c(t-1) (..., H) and W (4H, H)."""
    a_i, a_f, a_g, a_o = (a_x + F.linear(h, W)).chunk(4, dim=-1)  # (..., H) each
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c = f * c + i * g
    return o * torch.tanh(c), c  # (..., H) each


def gru_autograd(a_x: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, b_hn: torch.Tensor) -> torch.Tensor:
    """gru_update for t = 1..T, differentiated by autograd. a_x: (T, B, 3H), h0: (B, H) -> h: (T, B, H)."""
    h, hs = h0, []
    for a_t in a_x:  # (B, 3H)
        h = gru_update(a_t, h, W, b_hn)
        hs.append(h)
    return torch.stack(hs)


def lstm_autograd(
    a_x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, W: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """lstm_update for t = 1..T, differentiated by autograd. a_x: (T, B, 4H) -> h: (T, B, H), c(T): (B, H)."""
    h, c, hs = h0, c0, []
    for a_t in a_x:  # (B, 4H)
        h, c = lstm_update(a_t, h, c, W)
        hs.append(h)
    return torch.stack(hs), c


# ----------------------------------------------------------------------------- the hand-written backward


class GRURecurrence(torch.autograd.Function):
    """h(1..T) from a_x = [a_n, a_r, a_z], h(0), W = [W_r; W_z; W_n] and b_hn; gradients for all four.
    a_x becomes [n, r, z] in place (see gru_manual). Use it through gru_manual."""

    @staticmethod
    def forward(ctx, a_x: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, b_hn: torch.Tensor):
        ctx.set_materialize_grads(False)  # no zeros are made for the gates' gradient, which is never used
        T, B, H3 = a_x.shape
        H = H3 // 3
        h = a_x.new_empty(T + 1, B, H)  # h(0..T), one buffer, so h(t-1) for all t is the view h[:-1]
        h[0] = h0
        gates, m_n = a_x, a_x.new_empty(T, B, H)  # per step [n, r, z] in a_x's place, and m_n, kept for backward
        W_rz, W_n = W[: 2 * H].t(), W[2 * H :].t()  # (H, 2H), (H, H)
        steps = h.unbind(0)
        for t in range(T):
            n, rz = gates[t].split([H, 2 * H], dim=1)  # (B, H), (B, 2H)
            rz.addmm_(steps[t], W_rz).sigmoid_()  # r, z = σ(a + W h(t-1))
            torch.addmm(b_hn, steps[t], W_n, out=m_n[t])  # m_n = W_n h(t-1) + b_hn
            n.addcmul_(rz[:, :H], m_n[t]).tanh_()  # n = tanh(a_n + r ⊙ m_n)
            torch.lerp(n, steps[t], rz[:, H:], out=steps[t + 1])  # h = n + z ⊙ (h(t-1) - n)
        ctx.mark_dirty(a_x)
        ctx.save_for_backward(h, gates, m_n, W)
        return h[1:], gates  # (T, B, H), (T, B, 3H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: torch.Tensor | None, _: None) -> tuple[torch.Tensor | None, ...]:
        h, gates, m_n, W = ctx.saved_tensors  # (T + 1, B, H), (T, B, 3H), (T, B, H), (3H, H)
        if grad_h is None:  # h was not used: a zero gradient
            grad_h = torch.zeros_like(h[1:])
        T, B, H = grad_h.shape
        n, r, z = gates.split(H, dim=-1)  # (T, B, H) views
        # the coefficients of δ(t) = ∂L/∂h(t), for all t at once: [A_n, A_r, A_z, A_m], turned into
        # [da_n, da_r, da_z, ∂L/∂m_n] in place by the loop; then ∂L/∂a_x = [da_n, da_r, da_z] and
        # ∂L/∂m = [da_r, da_z, ∂L/∂m_n] are two overlapping views of it, in the orders of a_x and W: no copy
        # (each x(1 - y) is x - x ⊙ y: two passes over memory and no temporary)
        coef = gates.new_empty(T, B, 4 * H)
        A_n, A_r, A_z, A_m = coef.split(H, dim=-1)
        torch.addcmul(n.new_ones(()), n, n, value=-1, out=A_n).addcmul_(A_n, z, value=-1)  # (1 - n²)(1 - z)
        torch.mul(A_n, r, out=A_m)
        torch.mul(A_m, m_n, out=A_r).addcmul_(A_r, r, value=-1)  # A_n r m_n (1 - r)
        torch.sub(h[:-1], n, out=A_z).mul_(z).addcmul_(A_z, z, value=-1)  # (h(t-1) - n) z (1 - z)
        grad_h = grad_h.contiguous()  # ∂L/∂h(t)|above: (T, B, H)
        coef_steps, z_steps, above = coef.unbind(0), z.unbind(0), grad_h.unbind(0)
        delta, delta_next = torch.empty_like(above[0]), above[-1].clone()  # δ(t), δ(t+1): (B, H)
        coef_steps[-1].view(B, 4, H).mul_(delta_next.unsqueeze(1))  # t = T: nothing flows back from T + 1
        for t in range(T - 2, -1, -1):  # index t holds step t + 1
            torch.addcmul(above[t], delta_next, z_steps[t + 1], out=delta)  # |above + δ(t+1) ⊙ z(t+1)
            delta.addmm_(coef_steps[t + 1][:, H:], W)  # + ∂L/∂m(t+1) W
            coef_steps[t].view(B, 4, H).mul_(delta.unsqueeze(1))  # the four gradients of step t + 1
            delta, delta_next = delta_next, delta
        da_x, dm = coef[..., : 3 * H], coef[..., H:]  # (T, B, 3H) each
        dh0 = dW = db_hn = None
        if ctx.needs_input_grad[1]:
            dh0 = torch.addcmul(dm[0] @ W, delta_next, z_steps[0])  # (B, H)
        if ctx.needs_input_grad[2]:
            dW = dm.flatten(0, 1).t() @ h[:-1].flatten(0, 1)  # Σ_t dm(t)ᵀ h(t-1): (3H, T·B) x (T·B, H)
        if ctx.needs_input_grad[3]:
            db_hn = A_m.sum((0, 1))
        return da_x, dh0, dW, db_hn


class LSTMRecurrence(torch.autograd.Function):
    """h(1..T) and c(T) from a_x, h(0), c(0) and W; gradients for all four. a_x becomes [i, f, g, o] in place
    (see lstm_manual). Use it through lstm_manual."""

    @staticmethod
    def forward(ctx, a_x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, W: torch.Tensor):
        ctx.set_materialize_grads(False)  # no zeros are made for the gates' gradient, which is never used
        T, B, H4 = a_x.shape
        H = H4 // 4
        h, c = a_x.new_empty(T + 1, B, H), a_x.new_empty(T + 1, B, H)  # h(0..T), c(0..T)
        h[0], c[0] = h0, c0
        gates = a_x  # [i, f, g, o] per step, in a_x's place: (T, B, 4H)
        tanh_c = a_x.new_empty(T, B, H)  # tanh c(t), kept for backward
        Wt, h_steps, c_steps = W.t(), h.unbind(0), c.unbind(0)
        for t in range(T):
            g_t = gates[t].addmm_(h_steps[t], Wt)  # a_x + W h(t-1), activated in place: (B, 4H)
            g_t[:, : 2 * H].sigmoid_()  # i, f
            g_t[:, 2 * H : 3 * H].tanh_()  # g
            g_t[:, 3 * H :].sigmoid_()  # o
            i, f, g, o = g_t.split(H, dim=1)
            torch.mul(f, c_steps[t], out=c_steps[t + 1]).addcmul_(i, g)  # c = f ⊙ c(t-1) + i ⊙ g
            torch.mul(o, torch.tanh(c_steps[t + 1], out=tanh_c[t]), out=h_steps[t + 1])  # h = o ⊙ tanh c
        ctx.mark_dirty(a_x)
        ctx.save_for_backward(h, c, gates, tanh_c, W)
        return h[1:], c[T], gates  # (T, B, H), (B, H), (T, B, 4H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: torch.Tensor | None, grad_c: torch.Tensor | None, _: None):
        h, c, gates, tanh_c, W = ctx.saved_tensors  # (T + 1, B, H) x 2, (T, B, 4H), (T, B, H), (4H, H)
        grad_h = torch.zeros_like(h[1:]) if grad_h is None else grad_h  # an unused output: a zero gradient
        grad_c = torch.zeros_like(c[0]) if grad_c is None else grad_c
        T, B, H = grad_h.shape
        i, f, g, o = gates.split(H, dim=-1)  # (T, B, H) views
        # the coefficients, for all t at once: of γ(t) for i, f, g and of δ(t) for o (turned into da in place by
        # the loop), and of δ(t) in γ(t)
        # (each x(1 - y) is x - x ⊙ y: two passes over memory and no temporary)
        da = torch.empty_like(gates)  # (T, B, 4H)
        A_i, A_f, A_g, A_o = da.split(H, dim=-1)
        torch.addcmul(i, i, i, value=-1, out=A_i).mul_(g)  # i (1 - i) g
        torch.addcmul(f, f, f, value=-1, out=A_f).mul_(c[:-1])  # f (1 - f) c(t-1)
        torch.addcmul(g.new_ones(()), g, g, value=-1, out=A_g).mul_(i)  # (1 - g²) i
        h_t = h[1:]  # h(t) = o ⊙ tanh c(t), which shortens the last two:
        torch.addcmul(h_t, h_t, o, value=-1, out=A_o)  # o (1 - o) tanh c = h (1 - o)
        K_c = torch.addcmul(o, h_t, tanh_c, value=-1)  # o (1 - tanh²c) = o - h tanh c, of δ in γ: (T, B, H)
        grad_h = grad_h.contiguous()  # ∂L/∂h(t)|above: (T, B, H)
        da_steps, K_steps, f_steps, above = da.unbind(0), K_c.unbind(0), f.unbind(0), grad_h.unbind(0)
        delta, gamma = above[-1].clone(), torch.addcmul(grad_c, above[-1], K_steps[-1])  # δ(T), γ(T): (B, H)
        for t in range(T - 1, -1, -1):  # index t holds step t + 1
            if t < T - 1:
                torch.addmm(above[t], da_steps[t + 1], W, out=delta)  # δ = |above + da(t+1) W
                gamma.mul_(f_steps[t + 1]).addcmul_(delta, K_steps[t])  # γ = γ(t+1) ⊙ f(t+1) + δ ⊙ o (1 - tanh²c)
            da_steps[t][:, : 3 * H].view(B, 3, H).mul_(gamma.unsqueeze(1))  # da_i, da_f, da_g
            da_steps[t][:, 3 * H :].mul_(delta)  # da_o
        dh0 = dc0 = dW = None
        if ctx.needs_input_grad[1]:
            dh0 = da[0] @ W  # (B, H)
        if ctx.needs_input_grad[2]:
            dc0 = gamma * f_steps[0]  # (B, H)
        if ctx.needs_input_grad[3]:
            dW = da.flatten(0, 1).t() @ h[:-1].flatten(0, 1)  # Σ_t da(t)ᵀ h(t-1): (4H, T·B) x (T·B, H)
        return da, dh0, dc0, dW


def gru_manual(a_x: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, b_hn: torch.Tensor) -> torch.Tensor:
    """gru_update for t = 1..T with the hand-written backward. a_x: (T, B, 3H), h0: (B, H) -> h: (T, B, H).

    a_x is consumed: it is the layer's own input projection, needed by nothing else, so its buffer holds the
    gates for the backward (an in-place use autograd is told of) instead of a new (T, B, 3H) one: large fresh
    buffers are a good part of a CPU step's time (the first touch of a page costs several passes over it)."""
    dtype = recurrence_dtype(a_x)  # autocast's where it is on (bptt.py), at every layer
    return GRURecurrence.apply(a_x.to(dtype), h0.to(dtype), W.to(dtype), b_hn.to(dtype))[0]


def lstm_manual(
    a_x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, W: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """lstm_update for t = 1..T with the hand-written backward. a_x: (T, B, 4H) -> h: (T, B, H), c(T): (B, H).
    a_x is consumed, as in gru_manual."""
    dtype = recurrence_dtype(a_x)
    hs, c, _ = LSTMRecurrence.apply(a_x.to(dtype), h0.to(dtype), c0.to(dtype), W.to(dtype))
    return hs, c


# ----------------------------------------------------------------------------- the layers


class GatedLayer(nn.Module):
    """Per gate k: U_k (H, I), W_k (H, H), b_k (H,), named as in the equations; a subclass names the gates."""

    GATES: tuple[str, ...]  # the order of W's gates (and of U's, unless INPUT says otherwise)
    INPUT: tuple[str, ...]  # the order of U's and b's gates, in U x + b
    STATE: tuple[str, ...]  # the state it carries: ("hidden",) or ("hidden", "cell")

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        for k in self.GATES:
            setattr(self, f"U_{k}", nn.Parameter(torch.empty(hidden_size, input_size)))
            setattr(self, f"W_{k}", nn.Parameter(torch.empty(hidden_size, hidden_size)))
            setattr(self, f"b_{k}", nn.Parameter(torch.zeros(hidden_size)))
        self.input_drop: nn.Module | None = None  # the model's input dropout, on the first layer's U x

    def reset_parameters(self) -> None:
        """U_*, W_* uniform in [-1/sqrt(n), 1/sqrt(n)], n the fan-in; biases zero."""
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.uniform_(p, -1 / math.sqrt(p.shape[1]), 1 / math.sqrt(p.shape[1]))
            else:
                nn.init.zeros_(p)

    def stacked(self, letter: str) -> torch.Tensor:
        """The gates' U, W or b side by side: (kH, I), (kH, H) or (kH,), W in GATES order, U and b in INPUT's."""
        return torch.cat([getattr(self, f"{letter}_{k}") for k in (self.GATES if letter == "W" else self.INPUT)])

    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        """U x + b of every gate, (..., kH). For token ids, a lookup of rows of the small table Uᵀ + b (V, kH),
        which is U x + b for a one-hot x, in one gather of contiguous rows; above layer 0, a matmul, for all t
        at once a batched one whose result is a tensor of its own (F.linear's would be a view of one, which
        the recurrences, consuming a_x, cannot take over)."""
        U, b = self.stacked("U"), self.stacked("b")
        if not x.is_floating_point():
            Ut = U.t().contiguous()  # (V, kH): rows (U.t() + b would keep U.t()'s column layout)
            if self.input_drop is not None and self.input_drop.training and self.input_drop.p > 0:
                return self.input_drop(F.embedding(x, Ut)) + b  # dropout of U x, not of b
            return F.embedding(x, torch.add(Ut, b))
        if x.dim() == 3:  # (T, B, I)
            return torch.baddbmm(b, x, U.t().expand(len(x), -1, -1))  # (T, B, kH)
        return F.linear(x, U, b)  # (B, kH)


class GRULayer(GatedLayer):
    GATES, STATE = ("r", "z", "n"), ("hidden",)
    INPUT = ("n", "r", "z")  # so that ∂L/∂(U x + b) and ∂L/∂(W h) share one buffer in the backward
    RECURRENCES = {"manual": gru_manual, "autograd": gru_autograd}

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.b_hn = nn.Parameter(torch.zeros(hidden_size))  # the candidate's recurrent bias, inside r ⊙ (·)
        self.reset_parameters()

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """One step. x: (B,) ids or (B, I), state (h(t-1),) -> (h(t),), each (B, H)."""
        return (gru_update(self.input_projection(x), state[0], self.stacked("W"), self.b_hn),)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...], bptt: str):
        """T steps. x: (T, B) ids or (T, B, I), state (h(0),) -> h (T, B, H), (h(T),)."""
        hs = self.RECURRENCES[bptt](self.input_projection(x), state[0], self.stacked("W"), self.b_hn)
        return hs, (hs[-1],)


class LSTMLayer(GatedLayer):
    GATES, STATE = ("i", "f", "g", "o"), ("hidden", "cell")
    INPUT = GATES
    RECURRENCES = {"manual": lstm_manual, "autograd": lstm_autograd}
    FORGET_BIAS = 1.0  # b_f at initialisation

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As every gated layer, and b_f = 1: the forget gate starts mostly open (σ(1) ≈ 0.73)."""
        super().reset_parameters()
        nn.init.constant_(self.b_f, self.FORGET_BIAS)

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """One step. x: (B,) ids or (B, I), state (h(t-1), c(t-1)) -> (h(t), c(t)), each (B, H)."""
        return lstm_update(self.input_projection(x), *state, self.stacked("W"))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...], bptt: str):
        """T steps. x: (T, B) ids or (T, B, I), state (h(0), c(0)) -> h (T, B, H), (h(T), c(T))."""
        hs, c = self.RECURRENCES[bptt](self.input_projection(x), *state, self.stacked("W"))
        return hs, (hs[-1], c)


LAYERS = {"gru": GRULayer, "lstm": LSTMLayer}
