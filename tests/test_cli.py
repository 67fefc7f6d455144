"""The `rnnlm` command as a user runs it: real processes, real Lightning, real files."""

import json
import os

import pytest
import torch

from conftest import ROOT, run_rnnlm


def fit(*args, corpus, root):
    return run_rnnlm("fit", "--config", "configs/tiny.yaml", "--data.corpus", str(corpus),
                     "--data.data_dir", str(root / "data"), "--trainer.default_root_dir", str(root / "run"), *args)


@pytest.mark.slow
def test_fit_then_resume_from_last(small_corpus, tmp_path):
    first = fit("--trainer.max_steps", "10", corpus=small_corpus, root=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    second = fit("--trainer.max_steps", "20", "--ckpt_path", "last", corpus=small_corpus, root=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Restoring states from the checkpoint path at" in second.stderr + second.stdout
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 20
    assert last["rnnlm"]["tokenizer"]["type"] == "char" and last["rnnlm"]["val_bpc"] > 0
    for version, step in [(0, "9"), (1, "19")]:  # each run logs its own metrics.csv: its last step's train and val
        header, *rows = (run / "logs" / f"version_{version}" / "metrics.csv").read_text().splitlines()
        rows = [dict(zip(header.split(","), r.split(","), strict=True)) for r in rows]
        assert [(r["step"], bool(r["train/loss"]), bool(r["val/loss"])) for r in rows] == [
            (step, True, False), (step, False, True)]


@pytest.mark.slow
def test_resume_with_another_model_is_one_clear_line(small_corpus, tmp_path):
    assert fit("--trainer.max_steps", "10", corpus=small_corpus, root=tmp_path).returncode == 0
    before = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    bad = fit("--trainer.max_steps", "20", "--ckpt_path", "last", "--model.num_layers", "2",
              corpus=small_corpus, root=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: the checkpoint was trained with another model (num_layers 1 -> 2); resume with the options it was "
        "trained with, or start a new run in another --trainer.default_root_dir"
    )
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.corpus", "nosuch"], "error: unknown corpus 'nosuch': give a text file's path or one of"),
        (["--data.batch_size", "512", "--data.seq_len", "512"], "error: the corpus is too short: its "),
        (["--data.tokenizer", "bpe", "--data.vocab_size", "90000"], "error: sentencepiece cannot build a bpe vocab"),
        (["--model.nonlinearity", "sigmoid"], "error: --model.nonlinearity must be one of ['relu', 'tanh'], got 'sig"),
        (["--model.dropout", "1.5"], "error: --model.dropout must lie in [0, 1), got 1.5"),
        (["--model.init", "normal"], "error: --model.init must be one of ['fan_in', 'unit']"),
        (["--model.input_scale", "0"], "error: --model.input_scale must be a number > 0 (it multiplies the first"),
    ],
)
def test_bad_input_is_one_line(args, message, small_corpus, tmp_path):
    result = fit(*args, corpus=small_corpus, root=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_ddp_two_processes_own_different_streams_and_agree_on_weights(small_corpus, tmp_path):
    probe = json.dumps({"class_path": "ddp_probe.Probe", "init_args": {"out_dir": str(tmp_path)}})
    os.environ["PYTHONPATH"] = f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    try:
        result = fit("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                     "--trainer.max_steps", "6", f"--trainer.callbacks+={probe}", corpus=small_corpus, root=tmp_path)
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [len(r["first_tokens"]) for r in ranks] == [6, 6]  # 6 steps of 4 streams each
    assert all(a != b for a, b in zip(ranks[0]["first_tokens"], ranks[1]["first_tokens"], strict=True))
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were averaged: one model on both ranks
    assert ranks[0]["draws"] != ranks[1]["draws"]  # but each rank draws its own dropout masks
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()  # step 6 was validated, off the interval of 10


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_config_parses_with_the_contract_options(config):
    result = run_rnnlm("fit", "--config", f"configs/{config}", "--print_config")
    assert result.returncode == 0, result.stderr
    for option in ("hidden_size:", "num_layers:", "nonlinearity:", "dropout:", "lr:", "corpus:", "tokenizer:",
                   "vocab_size:", "batch_size:", "seq_len:", "gradient_clip_val:", "default_root_dir:"):
        assert option in result.stdout, option
