"""`rnnlm sample` and `rnnlm serve` as a shell runs them: every bad flag an argparse error (status 2,
one usage line, one error line naming the flag), and quiet exits: a closed pipe ends `sample` with
status 0, Ctrl-C with 130, neither with a traceback."""

import fcntl
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT, run_rnnlm

BAD_FLAGS = [  # (command, flags, the flag the error names)
    ("serve", ["--port", "99999"], "--port"),
    ("serve", ["--port", "0"], "--port"),
    ("serve", ["--port", "http"], "--port"),
    ("serve", ["--threads", "99999999999"], "--threads"),
    ("serve", ["--threads", "0"], "--threads"),
    ("serve", ["--threads", "1.5"], "--threads"),
    ("serve", ["--timeout", "nan"], "--timeout"),
    ("serve", ["--timeout", "inf"], "--timeout"),
    ("serve", ["--timeout", "0"], "--timeout"),
    ("serve", ["--timeout", "-1"], "--timeout"),
    ("serve", ["--shutdown-grace", "nan"], "--shutdown-grace"),
    ("serve", ["--shutdown-grace", "-1"], "--shutdown-grace"),
    ("serve", ["--stream-interval", "nan"], "--stream-interval"),
    ("serve", ["--stream-interval", "-inf"], "--stream-interval"),
    ("serve", ["--max-active", "0"], "--max-active"),
    ("serve", ["--max-queued", "-1"], "--max-queued"),
    ("serve", ["--max-tokens", "1e3"], "--max-tokens"),
    ("serve", ["--max-prompt-tokens", "0"], "--max-prompt-tokens"),
    ("serve", ["--max-body-bytes", "0"], "--max-body-bytes"),
    ("serve", ["--api-key", ""], "--api-key"),
    ("serve", ["--api-key", "two words"], "--api-key"),
    ("serve", ["--api-key", "tab\tkey"], "--api-key"),
    ("serve", ["--model-name", ""], "--model-name"),
    ("sample", ["--threads", "99999999999"], "--threads"),
    ("sample", ["--temperature", "nan"], "--temperature"),
    ("sample", ["--temperature", "-1"], "--temperature"),
    ("sample", ["--temperature", "inf"], "--temperature"),
    ("sample", ["--top-p", "0"], "--top-p"),
    ("sample", ["--top-p", "1.5"], "--top-p"),
    ("sample", ["--top-p", "nan"], "--top-p"),
    ("sample", ["--top-k", "-1"], "--top-k"),
    ("sample", ["-n", "0"], "--max-new-tokens"),
    ("sample", ["--seed", "-1"], "--seed"),
    ("sample", ["--seed", str(2**64)], "--seed"),
    ("sample", ["--stop", ""], "--stop"),
    ("eval", ["--threads", "0", "--text", "x"], "--threads"),
]


def test_every_bad_flag_is_an_argparse_error(char_export):
    """Each case a real `rnnlm` process (run side by side: most of their time is Python starting)."""

    def run(case):
        command, flags, _ = case
        return run_rnnlm(command, str(char_export.folder), *flags, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, BAD_FLAGS))
    for (command, flags, named), result in zip(BAD_FLAGS, results, strict=True):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (flags, result.stderr)
        assert len(lines) == 2 and lines[0].startswith(f"usage: rnnlm {command} "), (flags, result.stderr)
        assert lines[1].startswith(f"rnnlm {command}: error: argument ") and named in lines[1], (flags, lines)
        assert result.stdout == ""


def test_an_empty_api_key_in_the_environment_is_an_error(char_export, monkeypatch):
    monkeypatch.setenv("RNNLM_API_KEY", "")
    result = run_rnnlm("serve", str(char_export.folder), "--port", "1")
    assert result.returncode == 2
    assert "argument --api-key: the API key is empty" in result.stderr and "RNNLM_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_key_is_never_echoed_in_its_error(char_export):
    result = run_rnnlm("serve", str(char_export.folder), "--api-key", "secret value")
    assert result.returncode == 2 and "secret" not in result.stderr


def sample_process(folder, *args: str, pipe_size: int = 4096) -> subprocess.Popen:
    """`rnnlm sample` writing into a pipe of pipe_size bytes, with Ctrl-C's default action (a shell's
    background jobs may inherit SIGINT ignored)."""
    command = [sys.executable, "-m", "rnnlm", "sample", str(folder), *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONWARNINGS": "ignore"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    fcntl.fcntl(process.stdout.fileno(), fcntl.F_SETPIPE_SZ, pipe_size)  # 5,000 characters do not fit
    return process


def test_a_closed_pipe_ends_sample_quietly_with_status_0(char_export):
    """`rnnlm sample DIR -n 5000 | head -c 20`."""
    process = sample_process(char_export.folder, "-n", "5000", "--seed", "0")
    assert len(process.stdout.read(20)) == 20
    process.stdout.close()  # what head does once it has its 20 bytes
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""


def test_sigint_ends_sample_with_status_130_and_no_traceback(char_export):
    process = sample_process(char_export.folder, "-n", "10000", "--seed", "0")
    assert process.stdout.read(20)  # sampling; soon blocked on the full pipe
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert b"Traceback" not in stderr and b"KeyboardInterrupt" not in stderr, stderr


def test_a_shell_pipeline_to_head(char_export):
    if not os.path.exists("/usr/bin/head") and not os.path.exists("/bin/head"):
        pytest.skip("no head on this machine")
    sample = f'"{sys.executable}" -m rnnlm sample "{char_export.folder}" -n 5000'
    script = f'{sample} | head -c 20; echo " ${{PIPESTATUS[0]}}"'
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.endswith(" 0\n") and len(result.stdout) == 20 + 3
    assert result.stderr == ""
