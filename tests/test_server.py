"""`rnnlm serve` as clients meet it: a real server process on a loopback port, real HTTP (httpx)."""

import asyncio
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import ROOT, run_rnnlm
from rnnlm.runtime import Generator
from rnnlm.runtime.metrics import Metrics
from rnnlm.runtime.scheduler import Scheduler
from rnnlm.runtime.stepper import Stepper, StepProcess
from rnnlm.runtime.stepper import _child as stepper_child

LONG = 1_000_000  # max_tokens of a stream that outlives any test (far more than the tiny model makes in one)
KEY = "sésame-ключ"  # small_server's API key: not ASCII, so compared as UTF-8 bytes
AUTHORIZED = {"Authorization": f"Bearer {KEY}".encode()}


@pytest.fixture(scope="session")
def model_dir(small_corpus, tmp_path_factory) -> Path:
    """A tiny char model, trained for seconds and exported once."""
    root = tmp_path_factory.mktemp("served")
    fit = run_rnnlm("fit", "--config", "configs/tiny.yaml", "--data.corpus", str(small_corpus),
                    "--data.data_dir", str(root / "data"), "--trainer.default_root_dir", str(root / "run"))
    assert fit.returncode == 0, fit.stderr
    export = run_rnnlm("export", str(root / "run" / "checkpoints" / "best.ckpt"), "--out", str(root / "tiny"))
    assert export.returncode == 0, export.stderr
    return root / "tiny"


@pytest.fixture(scope="session")
def generator(model_dir) -> Generator:
    return Generator.load(model_dir)


@pytest.fixture(scope="session")
def prompts(small_corpus) -> list[str]:
    """Prompts the vocabulary knows: pieces of the training text, and the empty prompt."""
    text = small_corpus.read_text()
    return [text[:6], text[200:211], text[1000:1003], ""]


class Server:
    """A `python -m rnnlm serve` process on a free loopback port; its log goes to a file."""

    def __init__(self, model_dir: Path, log: Path, *options: str, env: dict | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.log = f"http://127.0.0.1:{self.port}", log
        command = [sys.executable, "-m", "rnnlm", "serve", str(model_dir), "--port", str(self.port), *options]
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the server did not come up:\n{log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def metric(self, name: str, headers: dict | None = None) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=5).text
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


@contextmanager
def serving(model_dir: Path, log: Path, *options: str, env: dict | None = None):
    server = Server(model_dir, log, *options, env=env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    options = ("--max-tokens", str(LONG), "--max-body-bytes", "20000", "--max-prompt-tokens", "1000")
    with serving(model_dir, tmp_path_factory.mktemp("log") / "serve.log", *options) as s:
        yield s


@pytest.fixture(scope="module")
def small_server(model_dir, tmp_path_factory):
    """One slot, one place in the queue, a 3 s timeout, and an API key from the environment."""
    options = ("--max-active", "1", "--max-queued", "1", "--timeout", "3", "--max-tokens", str(LONG))
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with serving(model_dir, log, *options, env={"RNNLM_API_KEY": KEY}) as s:
        yield s


def complete(server: Server, **request) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json=request, timeout=30)


def sse(lines) -> list:
    """The `data:` payloads of a server-sent event stream: JSON objects, then "[DONE]"."""
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def joined(events: list, choices: int = 1) -> tuple[list[str], list]:
    """The text and finish_reason of each choice from a stream's chunks."""
    texts, reasons = [""] * choices, [None] * choices
    for event in events:
        for choice in event["choices"] if isinstance(event, dict) else ():
            texts[choice["index"]] += choice["text"]
            reasons[choice["index"]] = choice["finish_reason"] or reasons[choice["index"]]
    return texts, reasons


# ----------------------------------------------------------------------------- completions


def test_models_and_completion(server, generator, prompts):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"] and models["object"] == "list"
    r = complete(server, model="tiny", prompt=prompts[0], max_tokens=40, temperature=0.8, top_k=20, seed=3)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["choices"] == [{"text": generator.generate(prompts[0], 40, 0.8, 20, seed=3), "index": 0,
                                "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 40, "total_tokens": 46}


def test_stream_equals_generate(server, generator, prompts):
    stop = ["\n\n", "the"]
    request = {"prompt": prompts[1], "max_tokens": 60, "seed": 11, "stop": stop, "stream": True,
               "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=request, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.iter_lines())
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    texts, reasons = joined(events)
    assert texts == [generator.generate(prompts[1], 60, stop=stop, seed=11)] and reasons[0] in ("stop", "length")
    assert events[-2]["usage"]["completion_tokens"] >= len(texts[0])


def test_list_prompt_and_n_use_seed_plus_choice(server, generator, prompts):
    r = complete(server, prompt=prompts[2:4], n=2, max_tokens=20, seed=5)
    choices = r.json()["choices"]
    expected = [generator.generate(p, 20, seed=5 + k) for k, p in enumerate([prompts[2]] * 2 + [prompts[3]] * 2)]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert [c["text"] for c in choices] == expected
    assert r.json()["usage"]["prompt_tokens"] == 3 + 1  # the empty prompt is the start token


def test_32_concurrent_streams_are_complete_and_correct(server, generator, prompts):
    prompts = prompts * 8

    async def one(client: httpx.AsyncClient, i: int) -> tuple[list[str], list]:
        request = {"prompt": prompts[i], "max_tokens": 80, "seed": i, "stream": True, "stop": "\n\n" if i % 2 else None}
        async with client.stream("POST", f"{server.url}/v1/completions", json=request) as r:
            assert r.status_code == 200
            events = sse([line async for line in r.aiter_lines()])
        assert events[-1] == "[DONE]"
        return joined(events)

    async def all_of_them():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    results = asyncio.run(all_of_them())
    for i, (texts, reasons) in enumerate(results):
        assert texts == [generator.generate(prompts[i], 80, stop="\n\n" if i % 2 else (), seed=i)]
        assert reasons[0] == ("length" if len(texts[0]) == 80 else "stop")
    assert server.metric("rnnlm_active_sequences") == 0


def test_disconnect_storm_frees_every_slot_and_leaks_no_memory(server):
    """40 streams, each dropped after a random number of chunks (some before the first): no slot stays taken,
    and four more storms leave the server's resident memory where the first left it (within 20 MB)."""
    rng = random.Random(0)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        request = {"prompt": "", "max_tokens": LONG, "stream": True, "n": 1 + i % 3}
        async with client.stream("POST", f"{server.url}/v1/completions", json=request) as r:
            assert r.status_code == 200
            lines, keep = r.aiter_lines(), rng.randrange(0, 20)
            for _ in range(keep):
                await anext(lines)

    async def storm():
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(one(client, i) for i in range(40)))

    def settled_rss() -> int:
        asyncio.run(storm())
        deadline = time.monotonic() + 5
        while (server.metric("rnnlm_active_sequences") or server.metric("rnnlm_queued_sequences")) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.metric("rnnlm_active_sequences") == 0 and server.metric("rnnlm_queued_sequences") == 0
        return psutil.Process(server.process.pid).memory_info().rss

    first = settled_rss()
    for _ in range(4):
        last = settled_rss()
    assert last - first < 20 * 2**20, f"resident memory grew by {(last - first) / 2**20:.1f} MB over four storms"
    assert complete(server, prompt="", max_tokens=5).status_code == 200


def test_disconnected_stream_frees_its_slot(server):
    request = {"prompt": "", "max_tokens": LONG, "stream": True}
    before = server.metric("rnnlm_generated_tokens_total")  # the server's total, over every test before this one
    with httpx.stream("POST", f"{server.url}/v1/completions", json=request, timeout=30) as r:
        lines = r.iter_lines()  # held: an iterator dropped is closed, and closes the stream
        assert next(lines).startswith("data: ")
        assert server.metric("rnnlm_active_sequences") == 1
    deadline = time.monotonic() + 5
    while server.metric("rnnlm_active_sequences") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("rnnlm_active_sequences") == 0
    assert server.metric("rnnlm_generated_tokens_total") - before < LONG


def test_access_log_has_one_json_line_per_request(server):
    def completion_lines() -> list[dict]:
        lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith('{"time"')]
        return [line for line in lines if line["path"] == "/v1/completions"]

    before = len(completion_lines())
    body = complete(server, prompt="", max_tokens=7).json()
    deadline = time.monotonic() + 10  # the line is written once the response is sent: it may trail the client
    while len(completion_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(completion_lines()) == before + 1
    last = completion_lines()[-1]
    assert last["status"] == 200 and last["completion_tokens"] == 7 and last["latency_ms"] > 0
    assert last["seed"] == body["seed"]  # drawn for the request, logged, and returned


def test_a_failing_step_cuts_its_batch_and_the_loop_goes_on(generator):
    class Flaky(Stepper):
        """Steps here, but its first run of steps raises."""

        failed = False

        def advance(self, sequences, until, patient):
            if not self.failed:
                self.failed = True
                raise RuntimeError("onnxruntime went away")
            return super().advance(sequences, until, patient)

    async def two_jobs():
        scheduler = Scheduler(Flaky(generator), Metrics(), max_active=4, max_queued=4, stream_interval=0.02)
        loop = asyncio.create_task(scheduler.run())
        jobs = []
        for _ in range(2):
            sequence = generator.start("", generator.params(max_new_tokens=9, seed=1))
            jobs.append(scheduler.submit([sequence], time.monotonic() + 10, False))
            await asyncio.wait_for(jobs[-1].done, 10)
        loop.cancel()
        return jobs

    failed, served = asyncio.run(two_jobs())
    assert failed.error == "failed" and served.error is None
    assert served.sequences[0].text == generator.generate("", 9, seed=1)


def test_a_step_process_steps_sequences_as_this_process_does(generator):
    cases = [("", 300, 1), ("the ", 120, 2), ("First", 200, 3), ("a", 260, 4)]
    stepper = StepProcess(generator, threads=1)
    try:
        ran = {}
        for where, steps in (("here", Stepper(generator)), ("there", stepper)):
            sequences = [generator.start(p, generator.params(max_new_tokens=n, seed=s)) for p, n, s in cases]
            left = sequences[3]  # leaves after its first run, unfinished: the child forgets it
            for run in range(1000):
                live = [s for s in sequences if not s.finished and (s is not left or run == 0)]
                if not live:
                    break
                pieces, _ = steps.advance(live, time.monotonic() + 0.005, 0)
                assert all(s.text.endswith(piece) for s, piece in zip(live, pieces, strict=True))
            ran[where] = [(s.text, s.token_ids, s.finish_reason) for s in sequences]
        assert ran["there"] == ran["here"]
        for (text, _, reason), (prompt, n, seed) in zip(ran["there"][:3], cases[:3], strict=True):
            assert reason == "length" and text == generator.generate(prompt, n, seed=seed)
        assert ran["there"][3][2] is None and 0 < len(ran["there"][3][1]) < 260
    finally:
        stepper.close()
    assert not stepper._process.is_alive()


def test_a_run_that_fails_in_the_step_process_is_answered_and_the_next_one_runs(generator, monkeypatch):
    advance, calls = Generator.advance, []

    def flaky(self, sequences, more):  # the child's first run raises
        calls.append(len(sequences))
        if len(calls) == 1:
            raise RuntimeError("onnxruntime went away")
        return advance(self, sequences, more)

    monkeypatch.setattr(Generator, "advance", flaky)
    server, child = multiprocessing.Pipe()
    params, replies = generator.params(max_new_tokens=9, seed=1), []

    def serve():  # the server's side of the pipe
        replies.append(server.recv())
        for key in (0, 1):
            server.send(("run", [(key, [generator.start_token], params)], [key], time.monotonic() + 10, math.inf))
            replies.append(server.recv())
        server.close()

    thread, handler = threading.Thread(target=serve), signal.getsignal(signal.SIGINT)
    thread.start()
    try:  # the child's loop, here: it returns when the server closes its end
        stepper_child(child, generator.manifest.folder, 1, generator.max_new_tokens_cap)
    finally:
        signal.signal(signal.SIGINT, handler)
        child.close()  # a loop that ended early leaves the server's side no reply to wait for
    thread.join()
    assert replies[:2] == [("ready",), ("failed", "RuntimeError: onnxruntime went away")]
    kind, [(text, tokens, reason, error)], steps = replies[2]
    assert kind == "done" and text == generator.generate("", 9, seed=1) and len(tokens) == steps == 9
    assert reason == "length" and error is None


def test_a_sequence_the_model_fails_cuts_its_request_and_no_other(generator):
    class Failing(Stepper):
        """Steps here, but the sequence with seed 666 fails once it has two tokens."""

        def advance(self, sequences, until, patient):
            pieces, steps = super().advance(sequences, until, patient)
            for s in sequences:
                if s.params.seed == 666 and len(s.token_ids) >= 2:
                    s.finish_reason = "error"
            return pieces, steps

    async def two_jobs():
        scheduler = Scheduler(Failing(generator), Metrics(), max_active=4, max_queued=4, stream_interval=0.02)
        loop = asyncio.create_task(scheduler.run())
        start = [generator.start("", generator.params(max_new_tokens=9, seed=seed)) for seed in (666, 1)]
        jobs = [scheduler.submit([sequence], time.monotonic() + 10, False) for sequence in start]
        await asyncio.wait_for(asyncio.gather(*(job.done for job in jobs)), 10)
        loop.cancel()
        return jobs

    failed, served = asyncio.run(two_jobs())
    assert failed.error == "failed" and served.error is None
    assert served.sequences[0].text == generator.generate("", 9, seed=1)


# ----------------------------------------------------------------------------- bad input


BAD = [
    (b'{"prompt": "a",', 400, None),
    (b"[1, 2]", 400, None),
    (b'{"prompt": "\xff"}', 400, None),
    (b'{"temperature": NaN}', 400, "temperature"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[1, 2]]}, 400, "prompt"),
    ({"max_tokens": "10"}, 400, "max_tokens"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": LONG + 1}, 400, "max_tokens"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"top_p": 1.5}, 400, "top_p"),
    ({"top_k": -1}, 400, "top_k"),
    ({"top_k": 2.5}, 400, "top_k"),
    ({"stop": 5}, 400, "stop"),
    ({"stop": [1]}, 400, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"seed": -1}, 400, "seed"),
    ({"seed": "x"}, 400, "seed"),
    ({"n": 1.5}, 400, "n"),
    ({"n": 0}, 400, "n"),
    ({"n": 65}, 400, "n"),
    ({"prompt": ["a"] * 65}, 400, "prompt"),
    ({"stream": "yes"}, 400, "stream"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"echo": True}, 400, "echo"),
    ({"frobnicate": 1}, 400, "frobnicate"),
    ({"model": "gpt-4"}, 404, "model"),
    ({"prompt": "a\u2603b\u2604"}, 400, "prompt"),
    ({"prompt": "a" * 1001}, 400, "prompt"),
    ({"prompt": "a" * 30000}, 413, None),
]


@pytest.mark.parametrize("body, status, param", BAD, ids=[f"{i}-{param or status}" for i, (_, status, param) in
                                                          enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(server, body, status, param):
    if isinstance(body, dict):
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "", "max_tokens": 5, **body}, timeout=10)
    else:
        r = httpx.post(f"{server.url}/v1/completions", content=body, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param and error["message"]
    if "\u2603" in str(body):
        assert "\u2603\u2604" in error["message"]  # names the characters the vocabulary lacks
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}


def test_oversized_chunked_body_is_413(server):
    chunks = (b'{"prompt": "' + b"a" * 5000 for _ in range(5))
    r = httpx.post(f"{server.url}/v1/completions", content=chunks, timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert complete(server, prompt="", max_tokens=3).status_code == 200


def test_unknown_path_and_method_have_openai_errors(server):
    assert httpx.get(f"{server.url}/v2/nothing").json()["error"]["message"] == "GET /v2/nothing: Not Found"
    assert httpx.get(f"{server.url}/v1/completions").status_code == 405


# ----------------------------------------------------------------------------- limits, keys, shutdown


def test_api_key(small_server):
    assert httpx.get(f"{small_server.url}/healthz").status_code == 200
    wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY.encode()},
             {"Authorization": b"Bearer " + KEY.encode()[:-1]}, {"Authorization": b"Bearer s\xe9same-"},  # latin-1
             {"Authorization": b"Bearer " + KEY.encode() + b"x"}]
    for headers in wrong:
        for r in (httpx.get(f"{small_server.url}/v1/models", headers=headers),
                  httpx.get(f"{small_server.url}/metrics", headers=headers),
                  httpx.post(f"{small_server.url}/v1/completions", json={"prompt": ""}, headers=headers)):
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{small_server.url}/v1/completions", json={"prompt": "", "max_tokens": 4}, headers=AUTHORIZED)
    assert r.status_code == 200 and httpx.get(f"{small_server.url}/v1/models", headers=AUTHORIZED).status_code == 200


def test_full_queue_gives_429_with_retry_after(small_server):
    request = {"prompt": "", "max_tokens": LONG, "stream": True}
    with httpx.Client(headers=AUTHORIZED, timeout=10) as client:
        with client.stream("POST", f"{small_server.url}/v1/completions", json=request) as running:
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")
            with client.stream("POST", f"{small_server.url}/v1/completions", json=request) as queued:
                assert queued.status_code == 200
                assert small_server.metric("rnnlm_queued_sequences", AUTHORIZED) == 1
                r = client.post(f"{small_server.url}/v1/completions", json=request)
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert client.get(f"{small_server.url}/healthz").status_code == 200


@pytest.mark.slow
def test_timeout_cuts_a_stream_cleanly(small_server):
    request = {"prompt": "", "max_tokens": LONG, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", f"{small_server.url}/v1/completions", json=request, headers=AUTHORIZED,
                      timeout=30) as r:
        events = sse(r.iter_lines())
    assert 2.5 < time.monotonic() - start < 10
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"


def signal_two_streams(s: Server, sig: int, wait: float = 0.0) -> tuple[list, list]:
    """Start a short stream (300 tokens) and an endless one, send sig once both have begun (after wait
    seconds), and return the events each received: (short, long)."""
    url = f"{s.url}/v1/completions"
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", url, json={"prompt": "", "max_tokens": LONG, "stream": True}) as long, \
             client.stream("POST", url, json={"prompt": "", "max_tokens": 300, "stream": True}) as short:
            long_lines, short_lines = long.iter_lines(), short.iter_lines()
            next(long_lines), next(short_lines)
            time.sleep(wait)
            s.process.send_signal(sig)
            return sse(short_lines), sse(long_lines)


@pytest.mark.slow
def test_sigterm_finishes_short_streams_cuts_long_ones_and_exits_0(model_dir, tmp_path):
    with serving(model_dir, tmp_path / "serve.log", "--shutdown-grace", "3", "--max-tokens", str(LONG)) as s:
        short_events, long_events = signal_two_streams(s, signal.SIGTERM)
        assert short_events[-1] == "[DONE]" and joined(short_events)[1] == ["length"]
        assert long_events[-1] == "[DONE]" and long_events[-2]["error"]["code"] == "server_shutting_down"
        assert s.process.wait(timeout=15) == 0
    assert "Finished server process" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_timeout_counts_from_arrival_body_upload_included(small_server):
    """--timeout 3: a body uploaded over 2 s leaves the completion 1 s (504 at ~3 s, where it was 5 s);
    a body still arriving at 3 s gets 408."""
    body = b'{"prompt": "", "max_tokens": %d}' % LONG
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    for upload, status, code in [(2.0, 504, "timeout"), (None, 408, "request_timeout")]:
        with socket.create_connection(("127.0.0.1", small_server.port), timeout=30) as client:
            start = time.monotonic()
            client.sendall(head + body[:10])
            if upload is not None:
                time.sleep(upload)
                client.sendall(body[10:])
            response = client.makefile("rb")
            assert response.readline().split()[1] == str(status).encode()
            headers = dict(line.lower().split(b":", 1) for line in iter(response.readline, b"\r\n"))
            assert json.loads(response.read(int(headers[b"content-length"])))["error"]["code"] == code
            assert 2.8 < time.monotonic() - start < 4.5


@pytest.mark.slow
def test_sigint_drains_and_closes_clients_that_stopped_reading(model_dir, tmp_path):
    """SIGINT drains as SIGTERM does; a client that stopped reading is closed after the grace, and the log
    holds no traceback. /v1/models answers from memory after manifest.json is moved away."""
    folder = shutil.copytree(model_dir, tmp_path / "moved")
    options = ("--shutdown-grace", "1", "--stream-interval", "0", "--max-tokens", str(LONG), "--max-active", "80")
    with serving(folder, tmp_path / "serve.log", *options) as s:
        (folder / "manifest.json").rename(tmp_path / "manifest.json")
        models = httpx.get(f"{s.url}/v1/models")
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "moved"
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads: the server's writes block
        stalled.connect(("127.0.0.1", s.port))
        body = json.dumps({"prompt": "", "max_tokens": LONG, "stream": True, "n": 64}).encode()
        stalled.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        short_events, long_events = signal_two_streams(s, signal.SIGINT, wait=2)  # the stalled stream fills buffers
        assert short_events[-1] == "[DONE]" and joined(short_events)[1] == ["length"]
        assert long_events[-1] == "[DONE]" and long_events[-2]["error"]["code"] == "server_shutting_down"
        assert s.process.wait(timeout=15) == 0
        stalled.close()
    log = (tmp_path / "serve.log").read_text()
    assert "closing 1 connection(s) whose clients stopped reading" in log, log[-3000:]
    assert "Traceback" not in log and "Finished server process" in log, log[-3000:]
