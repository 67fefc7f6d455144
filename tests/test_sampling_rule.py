"""The sampling rule gumbel-lowbias32/1 (docs/sampling.md): its published test vectors, and the
runtime's vectorized engine against a plain-Python transcription of the rule, one token at a time."""

import json
import math
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rnnlm.errors import RnnlmError
from rnnlm.runtime import Generator, SamplingParams, sample
from rnnlm.runtime.sampler import COMPILED_CHOOSE, choose, draw_bits, seed_key, uniform

DOC = Path(__file__).resolve().parents[1] / "docs" / "sampling.md"
MASK = 0xFFFFFFFF

# ----------------------------------------------------------------------------- the rule in plain Python


def lowbias32(x: int) -> int:
    x &= MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK
    x ^= x >> 16
    return x


def key(seed: int) -> int:
    return lowbias32((seed & MASK) ^ lowbias32((seed >> 32) ^ 0x9E3779B9))


def bits(k: int, n: int, i: int) -> int:
    return lowbias32(k + lowbias32(n + lowbias32(i)))


def u_of(b: int) -> float:
    return ((b >> 8) + 0.5) / 2**24


def draw(logits: list[float], temperature: float, top_k: int, top_p: float, seed: int, n: int) -> int:
    """The token the rule draws from logits (Python floats) at draw number n of a sequence seeded seed."""
    V = len(logits)
    if temperature == 0:
        return max(range(V), key=lambda i: (logits[i], -i))
    order = sorted(range(V), key=lambda i: (-logits[i], i))  # descending logit, ties by the lower id
    kept = order
    if 0 < top_k < V:
        kth = logits[order[top_k - 1]]
        kept = [i for i in order if logits[i] >= kth]
    m = logits[order[0]]
    z = {i: (logits[i] - m) / temperature for i in kept}
    if top_p < 1:
        c, total = [], 0.0
        for i in kept:
            total += math.exp(z[i])
            c.append(total)
        kept = kept[:next(j for j, cj in enumerate(c) if cj >= top_p * total) + 1]
    k, best, best_score = key(seed), -1, -math.inf
    for i in sorted(kept):
        score = z[i] - math.log(-math.log(u_of(bits(k, n, i))))
        if score > best_score:
            best, best_score = i, score
    return best


def reference_text(export, prompt: str, params: SamplingParams) -> list[int]:
    """The tokens of one sequence: onnxruntime at batch size 1, a token at a time, drawn by `draw`."""
    session = ort.InferenceSession(str(export.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    spec = json.loads((export.folder / "manifest.json").read_text())
    state = spec["state"][0]
    hidden = np.zeros([1 if d == "batch_size" else d for d in state["shape"]], np.float32)
    feed, tokens = export.tokenizer.encode(prompt) or [spec["generation"]["start_token"]], []
    for t in range(len(feed) - 1 + params.max_new_tokens):
        x = feed[t] if t < len(feed) else tokens[-1]
        logits, hidden = session.run(None, {"input_ids": np.array([x], np.int64), state["input"]: hidden})
        if t >= len(feed) - 1:
            tokens.append(draw(logits[0].tolist(), params.temperature, params.top_k, params.top_p, params.seed,
                               len(tokens)))
    return tokens


# ----------------------------------------------------------------------------- the published vectors


@pytest.fixture(scope="module")
def vectors() -> dict:
    block = re.search(r"<!-- vectors.*?```json\n(.*?)```", DOC.read_text(), re.S)
    return json.loads(block.group(1))


def test_keys_bits_and_u_match_the_published_vectors(vectors):
    for v in vectors["keys"]:
        assert seed_key(int(v["seed"])) == key(int(v["seed"])) == int(v["key"], 16)
    assert any(int(v["seed"]) >= 2**32 for v in vectors["keys"])
    for v in vectors["bits"]:
        k = key(int(v["seed"]))
        assert int(draw_bits(k, np.array([v["n"]]), np.array([v["i"]]))[0]) == bits(k, v["n"], v["i"]) == int(
            v["bits"], 16)
        assert float(uniform(np.array([int(v["bits"], 16)]))[0]) == u_of(int(v["bits"], 16)) == v["u"]


def test_draws_match_the_published_vectors(vectors):
    logits = np.array([vectors["logits"]], np.float32)
    for v in vectors["draws"]:
        seed, n = int(v["seed"]), len(v["ids"])
        params = SamplingParams(v["temperature"], v["top_k"], v["top_p"], seed=seed)
        options = v["temperature"], v["top_k"], v["top_p"]
        assert [draw(vectors["logits"], *options, seed, i) for i in range(n)] == v["ids"]
        assert sample(np.repeat(logits, n, axis=0), [params] * n, np.arange(n)).tolist() == v["ids"]


@pytest.mark.skipif(COMPILED_CHOOSE is None, reason="the compiled sampling pass was not built (no C compiler)")
def test_the_compiled_choice_equals_numpys_bit_for_bit():
    rng = np.random.default_rng(0)
    for case in range(300):
        B, V = int(rng.integers(1, 40)), int(rng.integers(1, 300))
        logits = (rng.standard_normal((B, V)) * [1e-6, 1.0, 40.0][case % 3]).astype(np.float32)
        noise = rng.gumbel(size=(B, 3, V))[:, case % 3]  # (B, V) a strided view, as a block of noise is read
        if case % 4 == 0:  # scores that tie: the lowest id wins
            logits, noise[...] = np.round(logits * 2) / 2, 0.0
        temperature = None if case % 2 else np.exp(rng.uniform(-745, 3, B))  # down to the smallest subnormals
        tokens = np.full(B, -7, np.int64)
        with np.errstate(over="ignore"):
            want = choose(logits, temperature, noise)
        assert COMPILED_CHOOSE(logits, noise, temperature, tokens) == 0
        assert tokens.tolist() == want.tolist()
    logits, noise, tokens = rng.standard_normal((6, 9)).astype(np.float32), rng.gumbel(size=(6, 9)), np.zeros(6, int)
    want = choose(logits, None, noise)
    logits[1, 0], logits[2, -1], logits[3, 4] = np.nan, np.inf, -np.inf  # rows not all finite: counted, left alone
    tokens[1:4] = -7
    assert COMPILED_CHOOSE(logits, noise, None, tokens) == 3
    assert tokens.tolist() == [want[0], -7, -7, -7, want[4], want[5]]
    for bad in ((logits.astype(np.float64), noise, None, tokens), (logits, noise[:-1], None, tokens),
                (logits, noise, None, tokens.astype(np.int32)), (logits, noise, np.ones(7), tokens)):
        with pytest.raises(ValueError, match=r"logits \(B, V\) float32"):
            COMPILED_CHOOSE(*bad)


# ----------------------------------------------------------------------------- the engine against the rule


MIXED = [  # prompt, temperature, top_k, top_p, seed: every kind of row in one batch
    ("First Citizen", 1.0, 0, 1.0, 3),
    ("", 0.7, 5, 1.0, 2**64 - 1),
    ("a", 1.3, 0, 0.9, 2**32 + 5),
    ("the king", 0.0, 0, 1.0, 11),
    ("to be", 0.9, 10, 0.8, 12),
    ("we", 1e-300, 0, 1.0, 13),
]


@pytest.fixture(scope="module")
def gen(char_export) -> Generator:
    return Generator.load(char_export.folder)


def test_a_mixed_batch_draws_what_the_rule_draws_token_by_token(char_export, gen):
    n = 500  # 3,000 tokens in all
    sequences = [gen.start(p, gen.params(temperature=t, top_k=k, top_p=q, seed=s, max_new_tokens=n))
                 for p, t, k, q, s in MIXED]
    while not all(s.finished for s in sequences):
        gen.step(sequences)
    for (prompt, *_), s in zip(MIXED, sequences, strict=True):
        assert s.token_ids == reference_text(char_export, prompt, s.params)


def test_rows_drawing_in_step_across_blocks_of_noise_draw_what_the_rule_draws(char_export, gen, chooser):
    # Rows in step take their noise in blocks computed ahead on a worker thread; rows leaving mid-block
    # (at 400 and 700 tokens) drop the block being computed.
    lengths, gen = [700, 400, 700, 1000], chooser(gen)
    sequences = [gen.start("the ", gen.params(temperature=1.0, seed=40 + k, max_new_tokens=n))
                 for k, n in enumerate(lengths)]
    while not all(s.finished for s in sequences):
        gen.step([s for s in sequences if not s.finished])
    for s, n in zip(sequences, lengths, strict=True):
        assert len(s.token_ids) == n
        assert s.token_ids == reference_text(char_export, "the ", s.params)


def test_rows_joining_a_running_batch_draw_what_the_rule_draws(char_export, gen, chooser):
    # As on a server: a sequence joins every 37 steps, mid-block, and takes its draws up to the others'
    # block end, so that all of them then refill together; one leaves early.
    prompts, sequences, gen = ["", "to be", "a", "", "to be", "a"], [], chooser(gen)
    for step in range(37 * 6 + 400):
        if step % 37 == 0 and len(sequences) < len(prompts):
            k = len(sequences)
            sequences.append(gen.start(prompts[k], gen.params(temperature=0.9, seed=70 + k,
                                                              max_new_tokens=150 if k == 2 else 400)))
        running = [s for s in sequences if not s.finished]
        if running:
            gen.step(running)
    assert all(s.finished for s in sequences)
    for prompt, s in zip(prompts, sequences, strict=True):
        assert s.token_ids == reference_text(char_export, prompt, s.params)


def test_generate_batch_draws_what_the_rule_draws(char_export, gen):
    prompts = [p for p, *_ in MIXED]
    texts = gen.generate_batch(prompts, max_new_tokens=300, temperature=0.8, top_k=12, top_p=0.95, seed=2**64 - 2)
    for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):  # prompt 2 wraps to seed 0
        params = SamplingParams(0.8, 12, 0.95, 300, seed=(2**64 - 2 + i) % 2**64)
        assert text == char_export.tokenizer.decode(reference_text(char_export, prompt, params))


@pytest.mark.parametrize("temperature", [1e-200, 1e-310, 5e-324])
def test_tiny_temperatures_draw_the_greedy_text(gen, temperature):
    greedy = gen.generate("the ", max_new_tokens=80, temperature=0)
    assert gen.generate("the ", max_new_tokens=80, temperature=temperature, seed=5) == greedy
    assert gen.generate_batch(["the ", "a"], max_new_tokens=80, temperature=temperature)[0] == greedy


def test_seeds_wrap_modulo_2_to_the_64_and_outside_are_refused(gen):
    assert gen.generate_batch(["a", "a"], max_new_tokens=30, seed=2**64 - 1)[1] == gen.generate("a", max_new_tokens=30,
                                                                                                 seed=0)
    for seed in (2**64, -1, 2**70):
        with pytest.raises(RnnlmError, match=r"seed must be an integer from 0 to 2\*\*64 - 1"):
            gen.generate("a", seed=seed)
    with pytest.raises(RnnlmError, match="seed must be an integer"):
        gen.generate_batch(["a", "b"], seed=[1, 2**64])


def test_a_request_without_a_seed_gets_one_that_redraws_its_text(gen):
    sequence = gen.start("the ", gen.params(max_new_tokens=40))
    while not sequence.finished:
        gen.step([sequence])
    seed = sequence.params.seed
    assert 0 <= seed < 2**64 and gen.generate("the ", max_new_tokens=40, seed=seed) == sequence.text
    params = gen.params()
    assert params.seed is not None and params.offset(1).seed == (params.seed + 1) % 2**64


def test_a_completion_without_a_seed_reports_the_one_it_drew(gen):
    """The server's response carries `seed`: its choices are that seed + k, so the text can be drawn again."""
    from rnnlm.runtime.completions import Responses, parse_request, start_sequences

    request = parse_request(b'{"prompt": ["the ", "a"], "n": 2, "max_tokens": 30}', gen, "m", 100, 8)
    sequences = start_sequences(request, gen, "error", 100)
    while not all(s.finished for s in sequences):
        gen.step(sequences)
    body = Responses("m", request, sequences).body()
    seed = body["seed"]
    assert 0 <= seed < 2**64 and [c["text"] for c in body["choices"]] == [
        gen.generate(p, max_new_tokens=30, seed=(seed + k) % 2**64) for k, p in enumerate(["the ", "the ", "a", "a"])]
