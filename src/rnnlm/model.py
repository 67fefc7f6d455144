"""The recurrent language model, written from its equations (no nn.RNN, nn.GRU or nn.LSTM).

For layer l at time t, with x(t) a token id (one-hot in the math), the vanilla cell (cell="rnn"):

    a(t) = b + U x(t) + W h(t-1)        U: (H, V) or (H, H) above layer 0, W: (H, H), b: (H,)
    h(t) = tanh(a(t))                   or relu
    o(t) = c + V h(t)                   V: (V, H), c: (V,)

or a gated cell (cell="gru" or "lstm", rnnlm.gated) in place of the first two lines. The letter V names two
things, as in the seed's notation: the output matrix `self.V`, and in shapes the vocabulary size (vocab_size).
H is hidden_size, L num_layers, B the batch and T the time steps. The equations and the BPTT derivation are in
docs/design.md.

The state is a tuple of (L, B, H) tensors, one per name in `state_names`: (h,) for rnn and gru, (h, c) for
lstm. `step` is one time step and the single source of truth; `forward` runs the same recurrence over T steps,
with the input projection U x + b done for all t at once. Its gradients come from the hand-written BPTT of
rnnlm.bptt and rnnlm.gated (bptt="manual", the default) or from autograd (bptt="autograd", the reference).
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.bptt import recurrence_manual
from rnnlm.gated import LAYERS

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


class LockedDropout(nn.Dropout):
    """Dropout whose mask is shared by all T steps of a call (variational dropout): x (T, B, H) is multiplied
    by one (1, B, H) mask of zeros and 1/(1 - p), each stream dropping the same units for the whole window;
    a single step's x (B, H) by a (B, H) mask. One random draw per (b, h) rather than per (t, b, h): the
    draws, not the multiply, are what dropout costs on a CPU (for T=64, 15x the time of the multiply)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty((1, *x.shape[1:]) if x.dim() == 3 else x.shape).bernoulli_(1 - self.p)  # (1, B, H)
        return x * mask.div_(1 - self.p)


RECURRENCES = {"manual": recurrence_manual, "autograd": recurrence_autograd}  # how BPTT is done; same numbers
# How the first layer's input matrices start (every other matrix starts as the seed's, ±1/√fan-in):
# "fan_in" is the seed's ±1/√V; "unit" is uniform in [-1, 1], each token's column an input drive of order 1,
# about what an N(0, 1) embedding gives a cuDNN RNN (at V=65, ±1/√V gives a drive of order 0.1).
INITS = ("fan_in", "unit")
CELLS = ("rnn", *LAYERS)  # the vanilla cell, then the gated ones


@dataclass(frozen=True)
class ModelConfig:
    """Everything that makes an RNNLM: `RNNLM(ModelConfig(vocab_size, hidden_size=...))`.

    The SHAPE fields define the weights' shapes: a checkpoint can only be resumed or loaded with the
    same ones. dropout and bptt may change from run to run (bptt changes how gradients are computed,
    not what they are). The LightningModule takes these fields as its own options (--model.hidden_size,
    ...) and builds its model with `from_hparams`; export rebuilds a trained model the same way.
    """

    vocab_size: int  # V: the tokenizer's size (also the letter of the output matrix, V: (V, H))
    hidden_size: int = 512  # H: units per layer
    num_layers: int = 1  # L: stacked layers
    nonlinearity: str = "tanh"  # f: tanh or relu, of the rnn cell (the gated cells have their own)
    cell: str = "rnn"  # rnn (the vanilla cell), gru or lstm
    dropout: float = 0.0  # between layers and before the output, in training only (LockedDropout)
    input_dropout: float = 0.0  # on the first layer's input drive U x (the token's column of U), likewise
    init: str = "fan_in"  # the first layer's input matrices: "fan_in" (the seed's ±1/√V) or "unit" (±1); INITS
    input_scale: float = 1.0  # ... then multiplied by this: init="unit", input_scale=3 draws them in [-3, 3]
    bptt: str = "manual"  # hand-written BPTT (rnnlm.bptt) or "autograd", the reference

    SHAPE: ClassVar[tuple[str, ...]] = ("vocab_size", "hidden_size", "num_layers", "nonlinearity", "cell")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {sorted(NONLINEARITIES)}, got {self.nonlinearity!r}")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {self.cell!r}")
        if self.cell != "rnn" and self.nonlinearity != ModelConfig.nonlinearity:
            raise ValueError(f"nonlinearity {self.nonlinearity!r} is for cell rnn only: the {self.cell} cell has its "
                             f"own (sigmoid gates, tanh candidate); leave it at {ModelConfig.nonlinearity!r}")
        for name in ("dropout", "input_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if isinstance(self.input_scale, bool) or not isinstance(self.input_scale, int | float) \
                or not 0 < self.input_scale < math.inf:
            raise ValueError(f"input_scale must be a number > 0 (it multiplies the first layer's input matrices "
                             f"at initialisation), got {self.input_scale!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)} (how the first layer's input matrices start), "
                             f"got {self.init!r}")
        if self.bptt not in RECURRENCES:
            raise ValueError(f"bptt must be one of {sorted(RECURRENCES)} (how gradients are computed), "
                             f"got {self.bptt!r}")

    @classmethod
    def from_hparams(cls, hparams: Mapping) -> "ModelConfig":
        """The config among a module's or a checkpoint's hyperparameters (the other keys are ignored)."""
        return cls(**{f.name: hparams[f.name] for f in fields(cls) if f.name in hparams})

    def shape(self) -> dict:
        """The fields that define the weights' shapes."""
        return {name: value for name, value in asdict(self).items() if name in self.SHAPE}


class RNNLM(nn.Module):
    """A stack of recurrent layers (vanilla, GRU or LSTM) with a softmax output over the vocabulary.

    The vanilla cell's weights are U, W, b (lists over layers) as in the seed; a gated cell's are in
    `layers`, one rnnlm.gated layer each, with per-gate names (layers.0.U_r, ...).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # shortcuts to the config, named as in the math's shape comments: V, H, L
        self.vocab_size, self.hidden_size, self.num_layers = config.vocab_size, config.hidden_size, config.num_layers
        self.nonlinearity, self.bptt = config.nonlinearity, config.bptt
        V, H = config.vocab_size, config.hidden_size
        if config.cell == "rnn":
            L = self.num_layers
            self.U = nn.ParameterList([nn.Parameter(torch.empty(H, V if l == 0 else H)) for l in range(L)])
            self.W = nn.ParameterList([nn.Parameter(torch.empty(H, H)) for _ in range(L)])
            self.b = nn.ParameterList([nn.Parameter(torch.zeros(H)) for _ in range(L)])
            self.state_names: tuple[str, ...] = ("hidden",)
        else:
            Layer = LAYERS[config.cell]
            self.layers = nn.ModuleList([Layer(V if l == 0 else H, H) for l in range(self.num_layers)])
            self.state_names = Layer.STATE
        self.V = nn.Parameter(torch.empty(V, H))  # the output matrix V; its rows count the vocabulary, also V
        self.c = nn.Parameter(torch.zeros(V))
        self.drop = LockedDropout(config.dropout)
        self.input_drop = LockedDropout(config.input_dropout)
        if config.cell != "rnn":
            self.layers[0].input_drop = self.input_drop
        self.reset_parameters()

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping) -> "RNNLM":
        """The model of an `rnnlm fit` checkpoint (a dict from torch.load): its hyper_parameters give the
        config, its state_dict's `model.*` entries the weights. Raises KeyError, ValueError or RuntimeError
        when they do not make a whole RNNLM."""
        model = cls(ModelConfig.from_hparams(checkpoint["hyper_parameters"]))
        state = checkpoint["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        return model

    def reset_parameters(self) -> None:
        """The seed's initialisation: U, W, V uniform in [-1/sqrt(n), 1/sqrt(n)], n the fan-in; b, c zero.
        A gated layer does the same for its gates (and sets the LSTM's b_f to 1) in its own constructor.
        With init="unit", the first layer's input matrices (U, or every U_k of a gated cell) are uniform in [-1, 1]
        instead; either way they are then multiplied by input_scale."""
        rnn = self.config.cell == "rnn"
        for weight in [*self.U, *self.W, self.V] if rnn else [self.V]:
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
        for bias in [*self.b, self.c] if rnn else [self.c]:
            nn.init.zeros_(bias)
        first = [self.U[0]] if rnn else [getattr(self.layers[0], f"U_{k}") for k in self.layers[0].GATES]
        with torch.no_grad():
            for weight in first:
                if self.config.init == "unit":
                    weight.uniform_(-1.0, 1.0)
                weight.mul_(self.config.input_scale)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        """A zero state tensor: (L, B, H)."""
        return torch.zeros(self.num_layers, batch_size, self.hidden_size, device=self.V.device, dtype=self.V.dtype)

    def init_state(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The zero state: one (L, B, H) tensor per name in state_names."""
        return tuple(self.init_hidden(batch_size) for _ in self.state_names)

    def input_projection(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """U x + b of the vanilla cell: a column lookup for token ids at layer 0, a matmul above it."""
        if layer == 0:
            Ut = self.U[0].t().contiguous()  # (V, H): rows gather faster than a transposed view's columns
            return self.input_drop(F.embedding(x, Ut)) + self.b[0]  # (..., H)
        return F.linear(x, self.U[layer], self.b[layer])  # (..., H)

    def layer_step(self, l: int, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """One step of layer l: x (B,) ids or (B, H), its state (h(t-1), ...) -> (h(t), ...), each (B, H)."""
        if self.config.cell != "rnn":
            return self.layers[l].step(x, state)
        f = NONLINEARITIES[self.nonlinearity]
        return (f(self.input_projection(l, x) + F.linear(state[0], self.W[l])),)  # (B, H)

    def layer_forward(self, l: int, x: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """T steps of layer l: x (T, B) ids or (T, B, H), its state (h(0), ...) -> h (T, B, H), (h(T), ...)."""
        if self.config.cell != "rnn":
            return self.layers[l](x, state, self.bptt)
        a_x = self.input_projection(l, x)  # (T, B, H), one batched op for all t
        hs = RECURRENCES[self.bptt](a_x, state[0], self.W[l], self.nonlinearity)  # (T, B, H)
        return hs, (hs[-1],)

    def step(self, input_ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One time step. input_ids: (B,), then the state, one (L, B, H) tensor per name in state_names
        -> logits (B, V), then the next state likewise: `logits, h = step(ids, h)` for rnn and gru,
        `logits, h, c = step(ids, h, c)` for lstm (one argument per state tensor, as an exported step has)."""
        x, next_state = input_ids, []
        for l in range(self.num_layers):
            layer_state = self.layer_step(l, x, tuple(s[l] for s in state))  # (B, H) each
            next_state.append(layer_state)
            x = self.drop(layer_state[0])  # h: (B, H)
        logits = F.linear(x, self.V, self.c)  # (B, V)
        return logits, *(torch.stack(s) for s in zip(*next_state, strict=True))  # (L, B, H) each

    def forward(
        self,
        input_ids: torch.Tensor,
        state: tuple[torch.Tensor, ...] | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
        """T steps at once. input_ids: (B, T), state: a tuple of (L, B, H) as init_state's, or None (zeros),
        targets: (B, T) or None.

        Returns logits (B, T, V), the last state (a tuple like `state`), and the mean cross-entropy over
        targets (positions with target -100 are ignored) when targets are given.
        """
        if state is None:
            state = self.init_state(input_ids.shape[0])
        x, last_state = input_ids.t(), []  # (T, B): time-major, so each step reads a contiguous (B, H) slice
        for l in range(self.num_layers):
            hs, layer_state = self.layer_forward(l, x, tuple(s[l] for s in state))  # (T, B, H), (B, H) each
            last_state.append(layer_state)
            x = self.drop(hs)
        logits = F.linear(x, self.V, self.c)  # (T, B, V): still time-major, so no (T, B, H) copy either way
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.t().flatten(), ignore_index=-100)
        last = tuple(torch.stack(s) for s in zip(*last_state, strict=True))  # one (L, B, H) per state tensor
        return logits.transpose(0, 1), last, loss  # logits as a (B, T, V) view
