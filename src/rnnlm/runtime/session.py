"""One onnxruntime session of the step function, fed through preallocated, bound buffers.

    input_ids (B,) int64, state_in...  ->  logits (B, V), state_out...

The state tensors are those the manifest lists (a vanilla RNN has one, past_hidden (L, B, H) ->
present_hidden), so a cell with more state (an LSTM's h and c) needs no change here. Opening a
session checks the graph against its manifest: the same inputs and outputs, with the declared
element types and shapes, and one step that yields finite logits. A folder that fails is refused
at load, never at a request.

The caller writes the inputs into `StepBuffers` and calls `run`; onnxruntime writes the outputs
into the buffers' own arrays, so the per-token path allocates nothing. Buffers are made once per
batch size and kept, since a continuous batch changes size whenever a sequence joins or leaves; the
cache is emptied when its rows would pass MAX_CACHED_ROWS. A session runs one call at a time.
"""

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from rnnlm.errors import RnnlmError
from rnnlm.runtime.manifest import BATCH, EXPORT_ADVICE, LOGITS, TOKENS, Manifest

MAX_CACHED_ROWS = 4096  # rows (sequences) of buffers kept across batch sizes: ~18 MB at H=512, V=65
ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}  # manifest dtype -> onnxruntime's name


@dataclass
class StepBuffers:
    """The arrays one call reads and writes, for one batch size. Outputs are overwritten by the
    next call. past[k] and present[k] belong to the manifest's state[k]."""

    input_ids: np.ndarray  # (B,) int64
    past: tuple[np.ndarray, ...]  # each (L, B, H) float32 today
    logits: np.ndarray  # (B, V) float32
    present: tuple[np.ndarray, ...]
    binding: ort.IOBinding

    def reset(self) -> None:
        """Every row's state to zeros: a new sequence."""
        for past in self.past:
            past[...] = 0

    def carry(self) -> None:
        """The state the last call returned becomes the next call's input, for every state tensor."""
        for past, present in zip(self.past, self.present, strict=True):
            past[...] = present


class StepSession:
    def __init__(self, model: bytes, manifest: Manifest, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads is not None:
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
                raise RnnlmError(f"threads must be an integer >= 1 (or None for onnxruntime's choice), got {threads!r}")
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one small graph: parallelism lives inside its matmuls
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        where = f"{manifest.data['model']['file']} in {manifest.folder}"
        try:  # from bytes, with no model path: nothing can be resolved against a folder
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a malformed graph
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise RnnlmError(f"onnxruntime cannot load {where} ({reason}); {EXPORT_ADVICE}") from None
        self.manifest, self.names, self.state = manifest, manifest.names, manifest.state
        self._check_io(where)
        self.shape = (manifest.num_layers, manifest.hidden_size, manifest.vocab_size)  # L, H, V
        self._buffers: dict[int, StepBuffers] = {}  # by batch size
        self._check_a_step(where)

    def _check_io(self, where: str) -> None:
        """The graph's inputs and outputs are exactly those the manifest names, with its dtypes and shapes."""
        m = self.manifest
        want_in = {self.names[TOKENS]: ("int64", (BATCH,)), **{s.input: (s.dtype, s.shape) for s in self.state}}
        want_out = {self.names[LOGITS]: ("float32", (BATCH, m.vocab_size)),
                    **{s.output: (s.dtype, s.shape) for s in self.state}}
        for kind, want, have in (("inputs", want_in, self.session.get_inputs()),
                                 ("outputs", want_out, self.session.get_outputs())):
            have = {x.name: x for x in have}
            if set(have) != set(want):
                raise RnnlmError(f"the graph {where} has {kind} {sorted(have)}, but its manifest names "
                                 f"{sorted(want)}; {EXPORT_ADVICE}")
            for name, (dtype, shape) in want.items():
                graph = [d if isinstance(d, int) else BATCH for d in have[name].shape]  # a named or unknown axis
                if have[name].type != ORT_TYPES[dtype] or graph != list(shape):
                    raise RnnlmError(
                        f"the graph {where} has {name} of type {have[name].type} and shape {graph}, but its manifest "
                        f"says {dtype} {list(shape)} (vocab_size {m.vocab_size}, num_layers {m.num_layers}, "
                        f"hidden_size {m.hidden_size}); {EXPORT_ADVICE}"
                    )

    def _check_a_step(self, where: str) -> None:
        """One step at two batch sizes from a zero state must run and yield finite logits."""
        for batch_size in (1, 2):
            buffers = self.buffers(batch_size)
            try:
                self.run(buffers)
            except Exception as e:  # onnxruntime's own exception types
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise RnnlmError(f"the graph {where} fails its first step ({reason}); {EXPORT_ADVICE}") from None
            if not np.isfinite(buffers.logits).all():
                raise RnnlmError(f"the graph {where} yields non-finite logits at its first step; {EXPORT_ADVICE}")

    def buffers(self, batch_size: int) -> StepBuffers:
        """The bound buffers for batch_size, made on its first call (the state zeroed)."""
        if batch_size in self._buffers:
            return self._buffers[batch_size]
        if sum(self._buffers) + batch_size > MAX_CACHED_ROWS:
            self._buffers.clear()
        buffers = self.bind(
            input_ids=np.zeros(batch_size, np.int64),
            past=tuple(np.zeros(s.batched(batch_size), s.dtype) for s in self.state),
            logits=np.zeros((batch_size, self.manifest.vocab_size), np.float32),
            present=tuple(np.zeros(s.batched(batch_size), s.dtype) for s in self.state),
        )
        self._buffers[batch_size] = buffers
        return buffers

    def bind(self, input_ids: np.ndarray, past: tuple[np.ndarray, ...], logits: np.ndarray,
             present: tuple[np.ndarray, ...]) -> StepBuffers:
        """StepBuffers over the caller's arrays (C-contiguous, of one batch size, kept alive by the caller):
        `run` reads input_ids and past and writes logits and present in place."""
        bind = self.session.io_binding()
        bind.bind_ortvalue_input(self.names[TOKENS], ort.OrtValue.ortvalue_from_numpy(input_ids))
        bind.bind_ortvalue_output(self.names[LOGITS], ort.OrtValue.ortvalue_from_numpy(logits))
        for s, x, y in zip(self.state, past, present, strict=True):
            bind.bind_ortvalue_input(s.input, ort.OrtValue.ortvalue_from_numpy(x))
            bind.bind_ortvalue_output(s.output, ort.OrtValue.ortvalue_from_numpy(y))
        return StepBuffers(input_ids, tuple(past), logits, tuple(present), bind)

    def run(self, buffers: StepBuffers) -> None:
        """One step: reads buffers.input_ids and past, writes logits and present."""
        native = getattr(self.session, "_sess", None)  # onnxruntime's C++ session, where this version has one
        if native is None:
            self.session.run_with_iobinding(buffers.binding)
        else:  # the Python wrapper checks for WebGPU graph capture first: ~8 us, a tenth of a small model's step
            native.run_with_iobinding(buffers.binding._iobinding, None)
