"""The torch-free runtime: sampler, generation, batched stepping, bad input (the manifest: test_manifest.py)."""

import re
import subprocess
import sys
from itertools import zip_longest

import numpy as np
import pytest

from conftest import BLOCK_TORCH
from rnnlm.errors import RnnlmError
from rnnlm.runtime import Generator, SamplingParams, Sequence, sample
from rnnlm.tokenizers import SentencePieceTokenizer

PROMPTS = ["First Citizen", "", "a", "the king"]


@pytest.fixture(scope="module")
def gen(char_export) -> Generator:
    return Generator.load(char_export.folder)


# ----------------------------------------------------------------------------- no torch


def test_runtime_and_sample_command_work_with_torch_unimportable(char_export, gen):
    code = BLOCK_TORCH + """
from rnnlm.runtime import Generator
print(Generator.load(sys.argv[1]).generate("the ", max_new_tokens=40, seed=3), end="|")
from rnnlm.cli import main
main(["sample", sys.argv[1], "--prompt", "the ", "-n", "40", "--seed", "3"])
print(sorted(m for m in sys.modules if m.partition(".")[0] in {"torch", "lightning", "onnx"}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(char_export.folder)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    text = gen.generate("the ", max_new_tokens=40, seed=3)
    assert out.stdout == f"{text}|the {text}\n[]\n"


# ----------------------------------------------------------------------------- generation


def test_same_seed_same_text_and_other_seeds_other_text(gen):
    a, b = gen.generate("the ", max_new_tokens=60, seed=1), gen.generate("the ", max_new_tokens=60, seed=1)
    assert a == b and len(a) == 60  # a char model: one character per token
    assert len({gen.generate("the ", max_new_tokens=60, seed=s) for s in range(2, 6)} | {a}) == 5


def test_temperature_zero_and_top_k_one_are_the_same_greedy_text(gen):
    greedy = gen.generate("the ", max_new_tokens=50, temperature=0, seed=1)
    assert greedy == gen.generate("the ", max_new_tokens=50, temperature=0, seed=2)
    assert greedy == gen.generate("the ", max_new_tokens=50, temperature=1.5, top_k=1, seed=3)
    assert greedy == gen.generate("the ", max_new_tokens=50, top_p=1e-6, seed=4)


def test_stream_pieces_join_to_generate(gen):
    for options in ({"seed": 5}, {"seed": 6, "stop": ["e", "zz"]}, {"temperature": 0}):
        pieces = list(gen.stream("to be", max_new_tokens=80, **options))
        assert all(pieces) and "".join(pieces) == gen.generate("to be", max_new_tokens=80, **options)


def test_generate_batch_equals_single_calls_with_the_same_seeds(gen):
    batch = gen.generate_batch(PROMPTS, max_new_tokens=40, seed=10, top_k=20)
    assert batch == [gen.generate(p, max_new_tokens=40, seed=10 + i, top_k=20) for i, p in enumerate(PROMPTS)]
    seeds = [7, 3, 7, 1]
    assert gen.generate_batch(PROMPTS, max_new_tokens=40, seed=seeds) == [
        gen.generate(p, max_new_tokens=40, seed=s) for p, s in zip(PROMPTS, seeds, strict=True)]


def test_sequences_joining_and_leaving_a_batch_keep_their_own_text(gen):
    """Continuous batching: a prefilling sequence shares steps with decoding ones; finished ones leave."""
    params = [gen.params(max_new_tokens=n, seed=s) for n, s in [(30, 1), (12, 2), (25, 3)]]
    live, done, texts = [gen.start(PROMPTS[0], params[0])], [], {}
    for t in range(60):
        if t == 5:
            live.append(gen.start(PROMPTS[3], params[1]))
        if t == 9:
            live.append(gen.start(PROMPTS[1], params[2]))
        pieces = gen.step(live)
        for s, piece in zip(live, pieces, strict=True):
            texts[id(s)] = texts.get(id(s), "") + piece
        done += [s for s in live if s.finished]
        live = [s for s in live if not s.finished]
    assert len(done) == 3 and all(s.finish_reason == "length" for s in done)
    by_params = {id(s.params): s for s in done}
    for prompt, p in zip([PROMPTS[0], PROMPTS[3], PROMPTS[1]], params, strict=True):
        s = by_params[id(p)]
        assert s.text == texts[id(s)] == gen.generate(prompt, max_new_tokens=p.max_new_tokens, seed=p.seed)


@pytest.mark.parametrize("stop", [(), ("\u2603",)])  # lazy runs; runs that decode at each step (never met)
def test_runs_of_steps_release_the_text_of_single_steps(gen, stop):
    """Generator.advance, as a server's loop calls it: runs of a few steps, the batch changing between runs.
    A run stops when more() says so or a sequence finishes; the texts it returns join to each sequence's."""
    params = [gen.params(max_new_tokens=n, seed=s, stop=stop) for n, s in [(30, 1), (12, 2), (25, 3), (9, 4)]]
    prompts = [PROMPTS[0], PROMPTS[3], PROMPTS[1], PROMPTS[2]]
    sequences = [gen.start(p, q) for p, q in zip(prompts, params, strict=True)]
    live, waiting, texts, runs = sequences[:1], sequences[1:], {id(s): "" for s in sequences}, 0
    while live or waiting:
        budget = iter(range(runs % 4))  # runs of 1 to 4 steps
        pieces, steps = gen.advance(live, lambda ended, budget=budget: next(budget, None) is not None)
        assert 1 <= steps <= runs % 4 + 1
        for sequence, piece in zip(live, pieces, strict=True):
            texts[id(sequence)] += piece
        live = [s for s in live if not s.finished] + waiting[:1]
        waiting, runs = waiting[1:], runs + 1
    for sequence, prompt, p in zip(sequences, prompts, params, strict=True):
        want = gen.generate(prompt, max_new_tokens=p.max_new_tokens, seed=p.seed)
        assert sequence.text == texts[id(sequence)] == want and sequence.finish_reason == "length"


def test_stop_strings_end_the_text_before_the_first_of_them(gen):
    text = gen.generate("the ", max_new_tokens=200, seed=8)
    first, later = text[60:62], text[120:123]
    cut = min(text.find(first), text.find(later))
    seq = gen.start("the ", gen.params(max_new_tokens=200, seed=8, stop=[later, first]))
    while not seq.finished:
        gen.step([seq])
    assert seq.text == text[:cut] and seq.finish_reason == "stop"
    assert gen.generate("the ", max_new_tokens=200, seed=8, stop=text[cut:cut + 2]) == text[:cut]
    assert gen.generate("the ", max_new_tokens=200, seed=8, stop="\u2603") == text  # never met


def test_max_new_tokens_ends_the_text(gen):
    seq = gen.start("", gen.params(max_new_tokens=17, seed=0))
    steps = 0
    while not seq.finished:
        gen.step([seq])
        steps += 1
    assert steps == 17 and len(seq.token_ids) == 17 and seq.finish_reason == "length"  # step 1 feeds the start token
    assert seq.prompt_ids == [gen.start_token]  # an empty prompt starts from the start token


def test_byte_pieces_are_held_until_they_make_whole_characters(small_corpus):
    tokenizer = SentencePieceTokenizer.train([line for line in small_corpus.read_text().splitlines() if line], 350)
    text = "Wh\u00e9re is the \u2603?"  # characters the corpus lacks become byte pieces
    ids = tokenizer.encode(text)
    assert len(ids) >= len("\u00e9\u2603".encode()) + 3
    seq = Sequence([0], SamplingParams(max_new_tokens=len(ids)), tokenizer)
    pieces = [seq.accept(token) for token in ids]
    assert "".join(pieces) == seq.text == text and not any("\ufffd" in piece for piece in pieces)
    assert seq.finish_reason == "length"


def test_a_batch_that_outgrows_its_rows_keeps_every_text(gen):
    """Sequences joining a running batch past its first capacity (8 rows): the pooled arrays grow."""
    first = [gen.start(p, gen.params(max_new_tokens=40, seed=i)) for i, p in enumerate(PROMPTS[:3])]
    for _ in range(10):
        gen.step(first)
    later = [gen.start(PROMPTS[i % 4], gen.params(max_new_tokens=25, seed=100 + i, top_k=5 * (i % 3)))
             for i in range(14)]
    everyone = first + later
    while not all(s.finished for s in everyone):
        gen.step(everyone)
    assert [s.text for s in first] == [gen.generate(p, max_new_tokens=40, seed=i) for i, p in enumerate(PROMPTS[:3])]
    assert [s.text for s in later] == [gen.generate(PROMPTS[i % 4], max_new_tokens=25, seed=100 + i, top_k=5 * (i % 3))
                                       for i in range(14)]


def test_a_sequence_leaving_unfinished_takes_its_state_along(gen):
    """Two streams read in turn share one Generator: each step swaps the other's state out and back in."""
    a, b = gen.stream("the ", max_new_tokens=50, seed=1), gen.stream("First", max_new_tokens=50, seed=2, stop="zz")
    texts = ["", ""]
    for pieces in zip_longest(a, b, fillvalue=""):
        texts = [t + p for t, p in zip(texts, pieces, strict=True)]
    assert texts == [gen.generate("the ", max_new_tokens=50, seed=1), gen.generate("First", max_new_tokens=50, seed=2)]


def test_one_sequence_alone_equals_it_in_a_batch_and_at_any_thread_count(char_export, gen):
    options = {"max_new_tokens": 120, "temperature": 0.9, "top_k": 30}
    batch = gen.generate_batch(PROMPTS, seed=[4, 5, 6, 7], **options)
    assert batch[2] == gen.generate(PROMPTS[2], seed=6, **options) == "".join(gen.stream(PROMPTS[2], seed=6, **options))
    for threads in (1, 2):
        assert Generator.load(char_export.folder, threads=threads).generate_batch(PROMPTS, seed=[4, 5, 6, 7],
                                                                                 **options) == batch


def test_non_finite_logits_end_that_sequence_with_an_error_and_the_batch_goes_on(char_export, monkeypatch, chooser):
    gen = chooser(Generator.load(char_export.folder))
    victim, others = gen.start("a", gen.params(max_new_tokens=40, seed=1)), [
        gen.start(p, gen.params(max_new_tokens=40, seed=s)) for p, s in (("the ", 2), ("First", 3))]
    run = gen.session.run

    def poisoned(buffers):  # the victim's logits turn NaN after its 10th token
        run(buffers)
        if len(victim.token_ids) >= 10 and victim.row is not None:
            buffers.logits[victim.row, 3] = np.nan

    monkeypatch.setattr(gen.session, "run", poisoned)
    sequences = [others[0], victim, others[1]]
    while not all(s.finished for s in sequences):
        gen.step(sequences)
    assert victim.finish_reason == "error" and len(victim.token_ids) == 10
    assert str(char_export.folder) in victim.error and "not all finite" in victim.error
    for s, (p, seed) in zip(others, (("the ", 2), ("First", 3)), strict=True):
        assert s.finish_reason == "length" and s.text == gen.generate(p, max_new_tokens=40, seed=seed)
    monkeypatch.setattr(gen.session, "run", lambda buffers: buffers.logits.fill(np.inf))
    for call, prompt in ((gen.generate, "a"), (lambda *a, **k: "".join(gen.stream(*a, **k)), "a"),
                         (gen.generate_batch, ["a", "b"])):
        with pytest.raises(RnnlmError, match="yielded logits that are not all finite"):
            call(prompt, max_new_tokens=40, seed=1)


@pytest.mark.slow
def test_a_subword_model_decodes_the_same_text_at_once_as_piece_by_piece(small_corpus, tmp_path):
    """Lazy decoding (generate, generate_batch) and incremental decoding (stream) of byte pieces agree."""
    import torch

    from rnnlm.export import write_export
    from rnnlm.model import RNNLM, ModelConfig

    tokenizer = SentencePieceTokenizer.train([line for line in small_corpus.read_text().splitlines() if line], 350)
    torch.manual_seed(1)
    model = RNNLM(ModelConfig(tokenizer.vocab_size, hidden_size=16)).eval()
    gen = Generator.load(write_export(model, tokenizer, tmp_path / "bpe"))
    options = {"max_new_tokens": 60, "temperature": 1.5}
    texts = gen.generate_batch(["the ", "W\u00e9", ""], seed=9, **options)
    for i, prompt in enumerate(["the ", "W\u00e9", ""]):
        assert texts[i] == gen.generate(prompt, seed=9 + i, **options) == "".join(
            gen.stream(prompt, seed=9 + i, **options))


# ----------------------------------------------------------------------------- the sampler


def draw(logits, n=20000, **options) -> np.ndarray:
    """Draws 0 .. n-1 of one sequence (seed 0), all from the same logits."""
    rows = np.tile(np.asarray(logits, np.float32), (n, 1))
    return sample(rows, [SamplingParams(seed=0, **options)] * n, np.arange(n))


def test_sampled_frequencies_follow_softmax_over_temperature():
    logits = np.array([0.0, 1.0, 2.0, -1.0])
    for temperature in (1.0, 0.5):
        p = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        frequencies = np.bincount(draw(logits, temperature=temperature), minlength=4) / 20000
        assert np.abs(frequencies - p).max() < 0.015


def test_top_k_and_top_p_keep_only_the_most_probable_tokens():
    logits = np.log([0.05, 0.5, 0.15, 0.3])
    assert set(draw(logits, 2000, top_k=2)) == {1, 3}
    assert set(draw(logits, 2000, top_p=0.75)) == {1, 3}  # 0.5 + 0.3 reaches 0.75
    assert set(draw(logits, 2000, top_p=0.85)) == {1, 2, 3}
    assert set(draw(logits, 2000, top_p=0.5)) == {1}


def test_greedy_rows_take_the_argmax_whatever_their_seed_and_draw_number():
    logits = np.array([[0.0, 3.0, 1.0, 3.0]] * 4, np.float32)  # a tie: the lower id
    params = [SamplingParams(temperature=0, seed=s) for s in (0, 1, 2**64 - 1, 7)]
    assert sample(logits, params, [0, 5, 9, 2**31]).tolist() == [1, 1, 1, 1]


def test_sample_refuses_rows_without_a_seed_or_with_non_finite_logits():
    with pytest.raises(RnnlmError, match="needs a seed"):
        sample(np.zeros((1, 3)), [SamplingParams()], [0])
    with pytest.raises(RnnlmError, match=r"row\(s\) \[1\] are not all finite"):
        sample(np.array([[0, 1, 2], [0, np.nan, 1]]), [SamplingParams(seed=0)] * 2, [0, 0])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("option, value, message", [
    ("temperature", -0.1, "temperature must be a number >= 0"),
    ("temperature", float("nan"), "temperature must be a number >= 0"),
    ("top_p", 0.0, "top_p must lie in (0, 1]"),
    ("top_p", 1.5, "top_p must lie in (0, 1]"),
    ("top_k", -1, "top_k must be an integer >= 0"),
    ("top_k", 2.5, "top_k must be an integer >= 0"),
    ("max_new_tokens", 0, "max_new_tokens must be an integer from 1 to 10000"),
    ("max_new_tokens", 10_001, "raise the cap"),
    ("stop", [""], "stop must be a list of non-empty strings"),
    ("seed", -3, "seed must be an integer from 0 to 2**64 - 1"),
    ("seed", 2**64, "seed must be an integer from 0 to 2**64 - 1"),
])
def test_bad_sampling_options_are_refused_before_any_step(gen, option, value, message):
    with pytest.raises(RnnlmError, match=re.escape(message)):
        gen.stream("the", **{option: value})


def test_the_cap_on_max_new_tokens_is_configurable(char_export):
    small = Generator.load(char_export.folder, max_new_tokens_cap=5)
    with pytest.raises(RnnlmError, match="from 1 to 5"):
        small.generate("the", max_new_tokens=6)
    assert len(small.generate("the", max_new_tokens=5)) == 5
    with pytest.raises(RnnlmError, match="unknown sampling option"):
        small.params(temprature=1.0)


def test_unknown_prompt_characters_are_named_or_dropped_or_replaced(gen):
    with pytest.raises(RnnlmError, match=r"'\u00e9\u2603'.*U\+00E9, U\+2603.*unknown='drop' or 'replace'"):
        gen.generate("h\u00e9llo \u2603", max_new_tokens=5)
    assert gen.generate("h\u00e9llo \u2603", max_new_tokens=20, seed=1, unknown="drop") == gen.generate(
        "hllo ", max_new_tokens=20, seed=1)
    assert gen.generate("h\u00e9llo", max_new_tokens=20, seed=1, unknown="replace") == gen.generate(
        "h llo", max_new_tokens=20, seed=1)
    with pytest.raises(RnnlmError, match="unknown must be one of"):
        gen.generate("hello", unknown="ignore")

