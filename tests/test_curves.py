"""Loss curves: metrics.csv of a run's versions joined by step, `rnnlm plot`, and what `rnnlm fit` ends with."""

import pytest

from conftest import run_rnnlm
from rnnlm.curves import read_curves, summary

PNG = b"\x89PNG\r\n\x1a\n"


def write_version(run, n: int, rows: list[tuple[int, float, float | None]], batch: int = 4, seq_len: int = 16):
    """logs/version_n/metrics.csv with (step, train/loss, val/loss) rows, and its config.yaml."""
    folder = run / "logs" / f"version_{n}"
    folder.mkdir(parents=True)
    lines = ["epoch,step,train/loss,train/tokens_per_s,val/bpc,val/loss"]
    lines += [f"0,{s},{t},1000,{'' if v is None else v * 1.44},{'' if v is None else v}" for s, t, v in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    config = f"model:\n  hidden_size: 32\ndata:\n  batch_size: {batch}\n  seq_len: {seq_len}\ntrainer:\n  devices: 2\n"
    (folder / "config.yaml").write_text(config)


def test_a_resumed_run_is_joined_by_step(tmp_path):
    write_version(tmp_path, 0, [(s, 3.0 - s / 100, 3.1 if s == 19 else None) for s in range(0, 30)])
    write_version(tmp_path, 1, [(s, 2.0, 2.5 if s == 29 else None) for s in range(20, 40)])  # resumed at 20
    curves = read_curves(tmp_path)
    steps = [s for s, _ in curves.rows["train/loss"]]
    assert steps == list(range(40))  # 20..29 of version 0 replaced by version 1's, no step twice
    assert dict(curves.rows["train/loss"])[19] == pytest.approx(2.81) and dict(curves.rows["train/loss"])[25] == 2.0
    assert curves.rows["val/loss"] == [(19, 3.1), (29, 2.5)]
    assert curves.best() == (29, 2.5, pytest.approx(3.6))
    assert curves.tokens_per_step == 4 * 16 * 2  # batch x seq_len x devices


def test_a_config_with_comments_still_gives_tokens_per_step(tmp_path):
    """A run folder whose config.yaml was written by hand, from a commented config like configs/*.yaml."""
    write_version(tmp_path, 0, [(0, 3.0, 3.1)])
    (tmp_path / "logs" / "version_0" / "config.yaml").write_text(
        "data:  # the corpus\n  batch_size: 128      # int >= 1: B\n  seq_len: 64 # T\n"
        "trainer:   # Lightning's\n  devices: 2  # GPUs\n")
    assert read_curves(tmp_path).tokens_per_step == 128 * 64 * 2


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = run_rnnlm("plot", str(tmp_path), "--out", str(tmp_path / "c.png"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {tmp_path} has no logs/version_N/metrics.csv; give the folder of a run")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.slow
def test_fit_ends_with_a_summary_and_curves_and_plot_draws_two_runs(small_corpus, tmp_path):
    def fit(run, steps, *args):
        result = run_rnnlm("fit", "--config", "configs/tiny.yaml", "--data.corpus", str(small_corpus),
                           "--data.data_dir", str(tmp_path / "data"), "--trainer.default_root_dir", str(run),
                           "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "2",
                           "--trainer.val_check_interval", "5", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    first, resumed = tmp_path / "a", tmp_path / "b"
    fit(first, 12)  # off the interval of 5: the last step is validated too, so best.ckpt may be it
    assert [step for step, _ in read_curves(first).rows["val/loss"]] == [4, 9, 11]
    fit(resumed, 10)
    out = fit(resumed, 20, "--ckpt_path", "last")
    best = read_curves(resumed).best()
    summary = out[out.index("rnnlm fit finished in"):].splitlines()
    assert summary[1] == f"best val/loss {best[1]:.4f} nats per token, val/bpc {best[2]:.4f}, at step {best[0]:,}"
    assert summary[2] == f"checkpoints: {resumed}/checkpoints/best.ckpt, {resumed}/checkpoints/last.ckpt"
    assert summary[3:] == [f"curves:      {resumed}/curves.png",
                           f"next:        make export RUN_DIR={resumed} NAME=b && make sample NAME=b PROMPT=\"ROMEO:\""]
    assert (resumed / "curves.png").read_bytes().startswith(PNG)
    steps = [s for s, _ in read_curves(resumed).rows["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 19  # both versions, joined

    result = run_rnnlm("plot", str(first), str(resumed), "--out", str(tmp_path / "both.png"), "--val", "bpc")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 'both.png'}\n"
    assert (tmp_path / "both.png").read_bytes().startswith(PNG) and (tmp_path / "both.png").stat().st_size > 20_000


def test_a_run_that_logged_nothing_still_gets_its_summary(tmp_path):
    assert summary(tmp_path / "run", 65.4, None, None).splitlines() == [
        "rnnlm fit finished in 1 min 5 s",
        "no metrics were logged: the run was shorter than --trainer.log_every_n_steps and --trainer.val_check_interval",
        f"next:        make export RUN_DIR={tmp_path / 'run'} NAME=run && make sample NAME=run PROMPT=\"ROMEO:\""]
