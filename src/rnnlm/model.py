"""The recurrent language model, written from its equations (no nn.RNN).

For layer l at time t, with x(t) a token id (one-hot in the math):

    a(t) = b + U x(t) + W h(t-1)        U: (H, V) or (H, H) above layer 0, W: (H, H), b: (H,)
    h(t) = tanh(a(t))                   or relu
    o(t) = c + V h(t)                   V: (V, H), c: (V,)

`step` is one time step and the single source of truth; `forward` runs the same
recurrence over T steps, with the input projection U x + b done for all t at once.
Its gradients come from the hand-written BPTT of rnnlm.bptt (bptt="manual", the default)
or from autograd through `recurrence_autograd` (bptt="autograd", the reference).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.bptt import recurrence_manual

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def recurrence_autograd(a_x: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """h(t) = f(a_x(t) + W h(t-1)) for t = 1..T, differentiated by autograd.

    a_x: (T, B, H) the input projection U x + b; h0: (B, H). Returns h: (T, B, H).
    """
    f = NONLINEARITIES[nonlinearity]
    h, hs = h0, []
    for a_t in a_x:  # a_t: (B, H)
        h = f(torch.addmm(a_t, h, W.t()))
        hs.append(h)
    return torch.stack(hs)


RECURRENCES = {"manual": recurrence_manual, "autograd": recurrence_autograd}  # how BPTT is done; same numbers


class RNNLM(nn.Module):
    """A stack of vanilla RNN layers with a softmax output over the vocabulary."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 512,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        dropout: float = 0.0,
        bptt: str = "manual",
    ) -> None:
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {sorted(NONLINEARITIES)}, got {nonlinearity!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if bptt not in RECURRENCES:
            raise ValueError(f"bptt must be one of {sorted(RECURRENCES)} (how gradients are computed), got {bptt!r}")
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.nonlinearity, self.bptt = nonlinearity, bptt
        H = hidden_size
        self.U = nn.ParameterList(
            [nn.Parameter(torch.empty(H, vocab_size if l == 0 else H)) for l in range(num_layers)]
        )
        self.W = nn.ParameterList([nn.Parameter(torch.empty(H, H)) for _ in range(num_layers)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(H)) for _ in range(num_layers)])
        self.V = nn.Parameter(torch.empty(vocab_size, H))
        self.c = nn.Parameter(torch.zeros(vocab_size))
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The seed's initialisation: U, W, V uniform in [-1/sqrt(n), 1/sqrt(n)], n the fan-in; b, c zero."""
        for weight in [*self.U, *self.W, self.V]:
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
        for bias in [*self.b, self.c]:
            nn.init.zeros_(bias)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(self.num_layers, batch_size, self.hidden_size, device=self.V.device, dtype=self.V.dtype)

    def input_projection(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """U x + b: a column lookup for token ids at layer 0, a matmul above it."""
        if layer == 0:
            return F.embedding(x, self.U[0].t()) + self.b[0]  # (..., H)
        return F.linear(x, self.U[layer], self.b[layer])  # (..., H)

    def step(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step. input_ids: (B,), hidden: (L, B, H) -> logits (B, V), hidden (L, B, H)."""
        f = NONLINEARITIES[self.nonlinearity]
        x, next_hidden = input_ids, []
        for l in range(self.num_layers):
            h = f(self.input_projection(l, x) + F.linear(hidden[l], self.W[l]))  # (B, H)
            next_hidden.append(h)
            x = self.drop(h)
        logits = F.linear(x, self.V, self.c)  # (B, V)
        return logits, torch.stack(next_hidden)

    def forward(
        self, input_ids: torch.Tensor, hidden: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """T steps at once. input_ids: (B, T), hidden: (L, B, H) or None, targets: (B, T) or None.

        Returns logits (B, T, V), the last hidden state (L, B, H), and the mean cross-entropy
        over targets (positions with target -100 are ignored) when targets are given.
        """
        B = input_ids.shape[0]
        if hidden is None:
            hidden = self.init_hidden(B)
        x, last_hidden = input_ids.t(), []  # (T, B): time-major, so each step reads a contiguous (B, H) slice
        for l in range(self.num_layers):
            a_x = self.input_projection(l, x)  # (T, B, H), one batched op for all t
            hs = RECURRENCES[self.bptt](a_x, hidden[l], self.W[l], self.nonlinearity)  # (T, B, H)
            last_hidden.append(hs[-1])
            x = self.drop(hs)
        logits = F.linear(x, self.V, self.c)  # (T, B, V): still time-major, so no (T, B, H) copy either way
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.t().flatten(), ignore_index=-100)
        return logits.transpose(0, 1), torch.stack(last_hidden), loss  # logits as a (B, T, V) view
