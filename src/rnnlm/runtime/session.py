"""One onnxruntime session of the step function, fed through preallocated, bound buffers.

    input_ids (B,) int64, past_hidden (L, B, H) float32  ->  logits (B, V), present_hidden (L, B, H)

The caller writes the inputs into `StepBuffers` and calls `run`; onnxruntime writes the outputs
into the buffers' own arrays, so the per-token path allocates nothing. Buffers are made once per
batch size and kept, since a continuous batch changes size whenever a sequence joins or leaves; the
cache is emptied when its rows would pass MAX_CACHED_ROWS. A session runs one call at a time.
"""

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from rnnlm.errors import RnnlmError
from rnnlm.runtime.manifest import EXPORT_ADVICE, INPUTS, OUTPUTS, Manifest

MAX_CACHED_ROWS = 4096  # rows (sequences) of buffers kept across batch sizes: ~18 MB at H=512, V=65


@dataclass
class StepBuffers:
    """The arrays one call reads and writes, for one batch size. Outputs are overwritten by the next call."""

    input_ids: np.ndarray  # (B,) int64
    past_hidden: np.ndarray  # (L, B, H) float32
    logits: np.ndarray  # (B, V) float32
    present_hidden: np.ndarray  # (L, B, H) float32
    binding: ort.IOBinding


class StepSession:
    def __init__(self, model: bytes, manifest: Manifest, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise RnnlmError(f"threads must be an integer >= 1 (or None for onnxruntime's choice), got {threads!r}")
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one small graph: parallelism lives inside its matmuls
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a malformed graph
            raise RnnlmError(f"onnxruntime cannot load {manifest.folder}/model.onnx ({e}); {EXPORT_ADVICE}") from None
        self.names = manifest.names
        graph_names = {x.name for x in self.session.get_inputs()} | {x.name for x in self.session.get_outputs()}
        missing = [self.names[role] for role in INPUTS + OUTPUTS if self.names[role] not in graph_names]
        if missing:
            raise RnnlmError(f"the graph in {manifest.folder} lacks the I/O its manifest names: {missing}; "
                             f"{EXPORT_ADVICE}")
        self.shape = (manifest.num_layers, manifest.hidden_size, manifest.vocab_size)  # L, H, V
        self._buffers: dict[int, StepBuffers] = {}  # by batch size

    def buffers(self, batch_size: int) -> StepBuffers:
        """The bound buffers for batch_size, made on its first call."""
        if batch_size in self._buffers:
            return self._buffers[batch_size]
        if sum(self._buffers) + batch_size > MAX_CACHED_ROWS:
            self._buffers.clear()
        L, H, V = self.shape
        arrays = {
            "input_ids": np.zeros(batch_size, np.int64),
            "past_hidden": np.zeros((L, batch_size, H), np.float32),
            "logits": np.zeros((batch_size, V), np.float32),
            "present_hidden": np.zeros((L, batch_size, H), np.float32),
        }
        binding = self.session.io_binding()
        for role, array in arrays.items():
            bind = binding.bind_ortvalue_input if role in INPUTS else binding.bind_ortvalue_output
            bind(self.names[role], ort.OrtValue.ortvalue_from_numpy(array))
        self._buffers[batch_size] = StepBuffers(**arrays, binding=binding)
        return self._buffers[batch_size]

    def run(self, buffers: StepBuffers) -> None:
        """One step: reads buffers.input_ids and past_hidden, writes logits and present_hidden."""
        self.session.run_with_iobinding(buffers.binding)
