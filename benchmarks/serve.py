"""Serving throughput: `rnnlm serve` under 1, 8, 32 and 64 concurrent streaming clients on loopback.

The model has one 512-unit tanh layer over a 65-symbol char vocabulary, with random
weights, since speed does not depend on what the weights say. The server is a real `rnnlm serve`
process; the clients are asyncio tasks in this process, each streaming one completion after another
on its own keep-alive connection for about `seconds` seconds (`tokens` new tokens on average, at
temperature 1). Throughput is the generated tokens of all clients (from each stream's usage block)
over the wall time of the level; time to first token runs from sending a request to the arrival of
its first text. The server and the clients share the machine's cores, as on one loopback host.
Beside each level, the bare step (benchmarks/generate.py: `InferenceSession.run` in a loop, one
thread, as the server's session) runs at a batch size of the client count, right after the level
(the median of five runs):
the served ÷ bare column is how much of the step function's speed the server delivers. The mean batch
(from the server's /metrics: sequences summed over steps ÷ steps) says how full its batch was: each
client sends its next request only after the whole response, so a slot can stand empty in between,
and a low served ÷ bare is the engine's cost only where the batch is near the client count.

    python benchmarks/serve.py [--tokens 200] [--seconds 3] [--rounds 3] [--threads N]
"""

import argparse
import asyncio
import json
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from generate import bare_step, one_thread_session
from rnnlm.export import write_export
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.tokenizers import CharTokenizer

VOCAB, HIDDEN = 65, 512
CLIENTS = (1, 8, 32, 64)
HOST = "127.0.0.1"


async def client(host: str, port: int, tokens: int, seed: int, until: float) -> tuple[int, list[float]]:
    """Stream completions back to back on one keep-alive connection until `until`; return the tokens
    generated and each request's time to first token. Lengths are drawn from [tokens/2, 3 tokens/2), so
    that clients do not finish in lockstep. A bare HTTP/1.1 client on asyncio streams: a load generator
    must cost far less than the server it measures, and the text itself is not needed."""
    generated, first_token, lengths = 0, [], random.Random(seed)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            body = json.dumps({"prompt": "", "max_tokens": tokens // 2 + lengths.randrange(tokens), "temperature": 1.0,
                               "stream": True, "seed": seed, "stream_options": {"include_usage": True}}).encode()
            start = time.perf_counter()
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"rnnlm serve answered {head.splitlines()[0].decode()}")
            received = await reader.read(1 << 16)
            first_token.append(time.perf_counter() - start)
            while not received.endswith(b"\r\n0\r\n\r\n"):  # the end of a chunked body
                received = received[-512:] + await reader.read(1 << 16)
            generated += int(re.findall(rb'"completion_tokens": (\d+)', received)[-1])
            seed += 1000
    finally:
        writer.close()
    return generated, first_token


async def level(port: int, clients: int, tokens: int, seconds: float) -> tuple[float, list[float]]:
    """Aggregate tokens/s of `clients` concurrent streams, and all their times to first token."""
    start = time.perf_counter()
    results = await asyncio.gather(*(client(HOST, port, tokens, i, start + seconds) for i in range(clients)))
    elapsed = time.perf_counter() - start
    return sum(n for n, _ in results) / elapsed, [t for _, times in results for t in times]


def step_totals(port: int) -> tuple[float, float]:
    """The server's batch sizes summed over its steps, and its steps, from /metrics."""
    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
    found = dict(re.findall(r"^(rnnlm_step_sequences_total|rnnlm_step_seconds_count) (\S+)$", text, re.M))
    return float(found["rnnlm_step_sequences_total"]), float(found["rnnlm_step_seconds_count"])


def bare_rate(session, batch_size: int, steps: int, runs: int = 5) -> float:
    """Tokens/s of the bare step at this batch size: the median of a few runs, since one run of a few
    dozen milliseconds is at the mercy of a moment's load."""
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        bare_step(session, batch_size, steps)
        rates.append(batch_size * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve(folder: Path, threads: int | None) -> tuple[subprocess.Popen, int]:
    """A `rnnlm serve` process on a free loopback port, once its /healthz answers."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "rnnlm", "serve", str(folder), "--port", str(port), "--max-active", "64",
               *(["--threads", str(threads)] if threads else [])]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
                return server, port
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"rnnlm serve did not answer on port {port} within 30 s")


def main(tokens: int = 200, seconds: float = 3.0, rounds: int = 3, threads: int | None = None) -> str:
    """A markdown section: tokens/s, time to first token and speed-up over one client, per client count.
    The client counts take turns round after round, so that a slow-down of the shared machine hits them
    alike; tokens/s is the median over rounds, the times to first token are pooled."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer("\n" + "".join(chr(32 + i) for i in range(VOCAB - 1)))
    rates, ttfts, bare, batches = ({c: [] for c in CLIENTS} for _ in range(4))
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_export(RNNLM(ModelConfig(VOCAB, HIDDEN)).eval(), tokenizer, Path(tmp) / "model")
        session = one_thread_session(folder / "model.onnx")
        server, port = serve(folder, threads)
        try:
            asyncio.run(level(port, 1, tokens, 0.5))  # warm-up
            for _ in range(rounds):
                for clients in CLIENTS:
                    before = step_totals(port)
                    rate, ttft = asyncio.run(level(port, clients, tokens, seconds))
                    after = step_totals(port)
                    batches[clients].append((after[0] - before[0]) / max(after[1] - before[1], 1))
                    rates[clients].append(rate)
                    ttfts[clients] += ttft
                    bare[clients].append(bare_rate(session, clients, tokens))
        finally:
            server.terminate()
            server.wait(timeout=30)
    one = statistics.median(rates[1])
    rows = ["| clients | tokens/s | x one client | bare step at this batch, tok/s | served ÷ bare | mean batch "
            "| TTFT p50 ms | TTFT p99 ms | requests |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for clients in CLIENTS:
        rate, ttft, step = statistics.median(rates[clients]), ttfts[clients], statistics.median(bare[clients])
        rows.append(f"| {clients} | {rate:,.0f} | {rate / one:.1f}x | {step:,.0f} | {rate / step:.2f} | "
                    f"{statistics.median(batches[clients]):.1f} | "
                    f"{1000 * statistics.median(ttft):.1f} | {1000 * percentile(ttft, 0.99):.1f} | {len(ttft)} |")
    header = (f"### Serving: `rnnlm serve`, H={HIDDEN}, V={VOCAB}, streaming clients on loopback, {tokens} tokens per "
              f"request on average, temperature 1 (median of {rounds} rounds of {seconds:g} s per client count; "
              f"onnxruntime threads: {threads or 'the serve default, 1'})")
    return "\n".join([header, "", *rows])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per request")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each client count is measured per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="the server's onnxruntime intra-op threads (default: serve's)")
    args = parser.parse_args()
    print(main(args.tokens, args.seconds, args.rounds, args.threads))
