"""The training step as one CUDA graph: forward, loss, the hand-written backward, clipping, AdamW's update and the
carried state, captured once and replayed for every batch of that shape.

On a GPU the recurrence launches a few small kernels per time step, forward and backward, and at moderate sizes
the launches cost more than the arithmetic; a replayed graph launches them all at once. A graph reads and writes
fixed memory, so the step keeps static buffers: the input ids and targets (B, T), the carried state (one (L, B, H)
tensor per state name, read as h(0) and overwritten with h(T)) and the loss. Each batch is copied in, then replayed.

- The first CUDA batch runs eagerly on a side stream: a real step, and the warm-up that creates AdamW's state and
  the libraries' workspaces. Then the step is captured on that stream (capture records kernels, it runs none);
  the batches after it replay the graph.
- A batch of another shape (a short last batch) runs the same step eagerly, and so does every step off CUDA.
- AdamW is made capturable (its step counts live on the GPU). While the step is captured its learning rate is a
  tensor per param group, filled from the group's float before each replay, so the schedule changes without
  re-capture; otherwise the groups hold floats, and schedulers, logs and checkpoints see an ordinary AdamW.
  `as_eager` writes a checkpoint's groups as an eager run's (capturable off), so that any device resumes it.
- Clipping uses the trainer's gradient_clip_val and algorithm and the torch function Lightning calls when it clips,
  which never waits for the GPU: inside the graph it is the same computation.
- Under autocast (--trainer.precision bf16-mixed) the forward runs in that precision but without autocast's cache
  of cast weights: a cached bf16 copy would be made once, at capture, and would never see the updates. Backward,
  clipping and the update run outside autocast, where Lightning runs them.

`resolve` turns --model.cuda_graph auto|true|false into graphed or not; `refusal` says what a run lacks (one CUDA
device without DDP, AdamW, a precision without loss scaling, no gradient accumulation).
"""

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import nn

from rnnlm.errors import RnnlmError

MODES = ("auto", "true", "false")  # --model.cuda_graph
CLIPS = {GradClipAlgorithmType.NORM: nn.utils.clip_grad_norm_, GradClipAlgorithmType.VALUE: nn.utils.clip_grad_value_}


def refusal(trainer, optimizer: str) -> str | None:
    """What the run lacks for a graphed step, as the words after "needs", or None when it can have one."""
    strategy = trainer.strategy
    if not isinstance(strategy, SingleDeviceStrategy) or strategy.root_device.type != "cuda":
        return (f"one CUDA device without DDP (--trainer.accelerator gpu --trainer.devices 1); this run has "
                f"{type(strategy).__name__} on {strategy.root_device.type}")
    if optimizer != "adamw":
        return "--model.optimizer adamw (torch's Adagrad has no capturable step)"
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        return f"a precision without loss scaling (32-true or bf16-mixed), not --trainer.precision {trainer.precision}"
    if trainer.accumulate_grad_batches != 1:
        return f"--trainer.accumulate_grad_batches 1, not {trainer.accumulate_grad_batches}"
    return None


def resolve(mode: str, trainer, optimizer: str) -> bool:
    """Whether the training step is graphed: auto where the run allows it, true or an error, false never."""
    if mode == "false":
        return False
    lacking = refusal(trainer, optimizer)
    if lacking is not None and mode == "true":
        raise RnnlmError(f"--model.cuda_graph true needs {lacking}; or set --model.cuda_graph auto, which trains "
                         "eagerly where a graph cannot run")
    return lacking is None


def as_eager(optimizer_states: list[dict]) -> None:
    """A checkpoint's optimizer states (Lightning's `optimizer_states`) written as an eager run's: capturable off,
    so that a CPU run resumes them too (a graphed run turns it back on at its capture)."""
    for state in optimizer_states:
        for group in state["param_groups"]:
            group["capturable"] = False


class GraphedStep:
    """`step(x, y, state) -> (loss, state)`: one whole training step of `model` with `optimizer`, graphed on CUDA.

    x, y: (B, T) input ids and targets; state: the carried state (a tuple of (L, B, H)) or None for zeros. Returns
    the mean loss (a 0-dim tensor, detached) and the next state (detached). After a replay both are the graph's
    static buffers, which the next replay overwrites.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, clip_val: float | None,
                 clip_algorithm: str | None) -> None:  # the trainer's gradient_clip_val and _algorithm (None: norm)
        self.model, self.optimizer = model, optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.clip_val, self.clip = clip_val, CLIPS[GradClipAlgorithmType(clip_algorithm or "norm")]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict = {}  # the graph's buffers: x, y (B, T), state ((L, B, H), ...), loss (), lr (one per group)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, state: tuple[torch.Tensor, ...] | None):
        if not x.is_cuda:
            return self.eager(x, y, state)
        if self.graph is None:
            return self.warm_up_and_capture(x, y, state)
        if x.shape != self.static["x"].shape or y.shape != self.static["y"].shape:
            return self.eager(x, y, state)
        return self.replay(x, y, state)

    # ------------------------------------------------------------------------- the step, eager or captured

    def update(self, x: torch.Tensor, y: torch.Tensor, state, autocast: torch.autocast):
        """Forward and loss in autocast's precision, then backward, clipping and AdamW's step (grads start None)."""
        with autocast:
            _, state, loss = self.model(x, state, y)
        with torch.autocast(x.device.type, enabled=False):
            loss.backward()
            if self.clip_val:
                self.clip(self.params, self.clip_val)
            self.optimizer.step()
        return loss.detach(), tuple(s.detach() for s in state)

    def eager(self, x: torch.Tensor, y: torch.Tensor, state):
        self.optimizer.zero_grad(set_to_none=True)
        return self.update(x, y, state, uncached_autocast(x.device.type))

    def warm_up_and_capture(self, x: torch.Tensor, y: torch.Tensor, state):
        """The first CUDA batch: an eager step on a side stream, then the capture of the step on that stream."""
        make_capturable(self.optimizer)
        autocast = uncached_autocast(x.device.type)  # the precision of this call, which the graph keeps
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            loss, next_state = self.eager(x, y, state)
            static = self.static = {
                "x": x.clone(), "y": y.clone(), "state": tuple(s.clone() for s in next_state),
                "lr": [torch.tensor(float(g["lr"]), device=x.device) for g in self.optimizer.param_groups],
            }
            self.optimizer.zero_grad(set_to_none=True)  # so that backward makes the gradients in the graph's pool
            rates = [g["lr"] for g in self.optimizer.param_groups]
            for group, lr in zip(self.optimizer.param_groups, static["lr"], strict=True):
                group["lr"] = lr
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=side):
                    static["loss"], captured_state = self.update(static["x"], static["y"], static["state"], autocast)
                    for buffer, s in zip(static["state"], captured_state, strict=True):
                        buffer.copy_(s)  # h(T) becomes the next replay's h(0)
            finally:
                for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
                    group["lr"] = rate
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = graph
        return loss, next_state

    def replay(self, x: torch.Tensor, y: torch.Tensor, state):
        static = self.static
        static["x"].copy_(x)
        static["y"].copy_(y)
        for buffer, s in zip(static["state"], state or [None] * len(static["state"]), strict=True):
            if s is None:
                buffer.zero_()  # a new epoch starts from the zero state
            elif s.data_ptr() != buffer.data_ptr():  # the state of an eager step, or of a resumed run
                buffer.copy_(s)
        for group, lr in zip(self.optimizer.param_groups, static["lr"], strict=True):
            lr.fill_(group["lr"])  # the schedule's rate for this step
        self.graph.replay()
        return static["loss"], static["state"]


def uncached_autocast(device_type: str) -> torch.autocast:
    """The autocast in force now (enabled or not, its dtype), without the cache of cast weights."""
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type), cache_enabled=False)


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """AdamW's capturable mode: its step counts on the parameters' device (a resumed eager run has them on the CPU)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(p.device, torch.float32)
