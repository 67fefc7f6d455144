"""How an exported graph is judged against the torch model it came from, before it is written.

A float32 graph computes what torch computes: on random tokens and states at batch sizes 1 and 7,
logits and every state tensor (hidden, and an LSTM's cell) may differ by at most 1e-5.

An int8 graph (dynamic quantization: int8 weights, one scale per matrix, activations quantized per
call) moves logits by an amount that depends on the weights, so no fixed bound on |diff| fits every
model. It is judged by what a user of the model sees, the next-token distribution, against torch's:

    KL(p || q) = Σ_i p(i) (log p(i) − log q(i)),  p = softmax(torch logits), q = softmax(int8 logits)
    top-1 agreement = the fraction of states where argmax q = argmax p

on two sets of states: RANDOM_STATES random tokens and states (uniform in [-1, 1]), and the model's
own text, STREAMS streams of STEPS tokens sampled from it (stream b starts at token b of the
vocabulary), torch and the int8 graph each carrying its own state over the same tokens, as
`rnnlm eval` does. On each set, the mean KL must be at most INT8_BOUNDS["kl_mean"] nats and the
top-1 agreement at least INT8_BOUNDS["top1_agreement"].

What was measured (tests/test_export.py checks four such models and four broken graphs): int8
graphs of random and of trained-like models (H = 32 to 1024, V = 65 to 4,000, 1 or 2 layers, and
char models trained for 400 steps) gave a mean KL of at most 0.0015 nats and top-1 agreement of at
least 0.97; broken graphs of trained models (a weight matrix zeroed, V scaled by 0.8 or 1.5, U
scaled by 1.2, one row of V zeroed, noise on c) gave a mean KL of 0.017 to 0.76 nats on at least
one of the two sets.
"""

import numpy as np
import onnxruntime as ort
import torch

from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM
from rnnlm.runtime.evaluate import log_softmax
from rnnlm.runtime.manifest import LOGITS, TOKENS

BATCH_SIZES = (1, 7)
FLOAT32_TOLERANCE = 1e-5  # max |onnxruntime - torch| on logits and hidden states
RANDOM_STATES, STREAMS, STEPS = 512, 16, 64
INT8_BOUNDS = {"kl_mean": 0.01, "top1_agreement": 0.9}
RULES = {
    "none": f"max |onnxruntime - torch| <= {FLOAT32_TOLERANCE:g} on logits and on every state tensor",
    "int8": f"the float32 graph: max |onnxruntime - torch| <= {FLOAT32_TOLERANCE:g}; the int8 graph against torch, "
            f"on {RANDOM_STATES} random states and on {STREAMS} x {STEPS} states of the model's own text: "
            f"mean KL(torch || int8) <= {INT8_BOUNDS['kl_mean']:g} nats and top-1 agreement >= "
            f"{INT8_BOUNDS['top1_agreement']:g} of the next-token distributions, on each set",
}
NOTHING_WRITTEN = "nothing was written (report this with the checkpoint)"


def _session(graph: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def _names(model: RNNLM) -> tuple[list[str], list[str]]:
    """The graph's input and output names: input_ids and past_<state>; logits and present_<state>."""
    return ([TOKENS, *(f"past_{n}" for n in model.state_names)], [LOGITS, *(f"present_{n}" for n in model.state_names)])


def _random_state(model: RNNLM, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
    """One state tensor per name in model.state_names, uniform in [-1, 1]: (L, B, H) each."""
    shape = (model.num_layers, batch_size, model.hidden_size)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in model.state_names]


def float32_parity(model: RNNLM, graph: bytes) -> dict:
    """Run the graph in onnxruntime and model.step in torch on the same random tokens and states at
    each of BATCH_SIZES; raise RnnlmError when they differ by more than FLOAT32_TOLERANCE."""
    session, rng, (inputs, outputs) = _session(graph), np.random.default_rng(0), _names(model)
    got, want = [], []
    for B in BATCH_SIZES:
        ids, past = rng.integers(0, model.vocab_size, B), _random_state(model, rng, B)  # (B,), (L, B, H) each
        got.append(session.run(outputs, dict(zip(inputs, (ids, *past), strict=True))))
        with torch.no_grad():
            want.append([t.numpy() for t in model.step(torch.from_numpy(ids), *map(torch.from_numpy, past))])
    diff = {name: max(float(np.abs(g[k] - w[k]).max()) for g, w in zip(got, want, strict=True))
            for k, name in enumerate(("logits", *model.state_names))}
    limit = {name: FLOAT32_TOLERANCE for name in diff}
    for name in diff:
        if not diff[name] <= limit[name]:
            raise RnnlmError(f"the exported graph disagrees with torch at batch sizes {BATCH_SIZES}: max |diff| of "
                             f"{name} is {diff[name]:.3g} > {limit[name]:.3g}; {NOTHING_WRITTEN}")
    return {"batch_sizes": list(BATCH_SIZES), "max_abs_diff": diff, "tolerance": limit, "rule": RULES["none"]}


def int8_agreement(model: RNNLM, graph: bytes) -> dict:
    """Compare the next-token distributions of an int8 graph with torch's on random states and on the
    model's own text (module docstring); raise RnnlmError when a set breaks INT8_BOUNDS. Returns
    what was measured on each set."""
    session, rng, (inputs, outputs) = _session(graph), np.random.default_rng(0), _names(model)
    ids, past = rng.integers(0, model.vocab_size, RANDOM_STATES), _random_state(model, rng, RANDOM_STATES)
    with torch.no_grad():
        want = model.step(torch.from_numpy(ids), *map(torch.from_numpy, past))[0].numpy()  # (N, V)
    got = session.run([LOGITS], dict(zip(inputs, (ids, *past), strict=True)))[0]
    measured = {"random_states": _agreement(want, got)}

    generator = torch.Generator().manual_seed(0)
    x = torch.arange(STREAMS) % model.vocab_size  # (B,): each stream starts at another token of the vocabulary
    state = model.init_state(STREAMS)  # (L, B, H) each, torch's
    state_int8 = [s.numpy() for s in state]  # the int8 graph's own
    want, got = [], []
    with torch.no_grad():
        for _ in range(STEPS):
            logits, *state = model.step(x, *state)  # (B, V), then (L, B, H) each
            logits_int8, *state_int8 = session.run(outputs, dict(zip(inputs, (x.numpy(), *state_int8), strict=True)))
            want.append(logits.numpy())
            got.append(logits_int8)
            x = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]  # the model's own text
    measured["own_text"] = _agreement(np.concatenate(want), np.concatenate(got))

    for name, m in measured.items():
        if not (m["kl_mean"] <= INT8_BOUNDS["kl_mean"] and m["top1_agreement"] >= INT8_BOUNDS["top1_agreement"]):
            raise RnnlmError(
                f"the int8 graph's next-token distributions stray from torch's on {name.replace('_', ' ')}: mean KL "
                f"{m['kl_mean']:.3g} nats (at most {INT8_BOUNDS['kl_mean']:g}), top-1 agreement "
                f"{m['top1_agreement']:.3f} (at least {INT8_BOUNDS['top1_agreement']:g}); export without --quantize, "
                f"or {NOTHING_WRITTEN}"
            )
    return {**measured, "bounds": INT8_BOUNDS}


def _agreement(want: np.ndarray, got: np.ndarray) -> dict:
    """KL(softmax(want) || softmax(got)) per row, in float64, and top-1 agreement. want, got: (N, V)."""
    p, q = log_softmax(want), log_softmax(got)  # (N, V) each
    kl = (np.exp(p) * (p - q)).sum(axis=1)  # (N,)
    return {"states": len(kl), "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "top1_agreement": float((want.argmax(axis=1) == got.argmax(axis=1)).mean())}

