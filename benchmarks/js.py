"""JavaScript generation speed beside Python's, in one run: serve/js on onnxruntime-node (Node) at
batch 1 and 32 against the Python Generator on the same export, and the page of serve/web in
headless Chromium (onnxruntime-web, WASM), measured by the page itself (`window.rnnlm.measure`:
after a warm-up, the median of three runs).

The model has one 512-unit tanh layer (V=65, random weights: speed does not
depend on what they say). Every contender samples at temperature 1 with a fixed seed from the start
token, with one onnxruntime thread in Python and Node (the browser uses the WASM threads that
cross-origin isolation allows). Python and Node take turns round after round; a number is the median
over rounds. Skipped, saying why, without node, serve/js/node_modules or Chromium.

    python benchmarks/js.py [--tokens 1000] [--rounds 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from rnnlm.export import write_export
from rnnlm.model import RNNLM, ModelConfig
from rnnlm.runtime import Generator
from rnnlm.tokenizers import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "serve" / "js"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
VOCAB, HIDDEN = 65, 512
BATCH_SIZES = (1, 32)

# One round of Node: prints {"1": tokens/s, "32": tokens/s}.
NODE_ROUND = """
import { Generator } from './src/node.js';
const [folder, tokens] = [process.argv[1], Number(process.argv[2])];
const g = await Generator.load(folder, { threads: 1 });
await g.generate('', { maxNewTokens: 16, temperature: 1, seed: 0 });
const speed = {};
for (const B of [1, 32]) {
  const started = performance.now();
  if (B === 1) await g.generate('', { maxNewTokens: tokens, temperature: 1, seed: 0 });
  else await g.generateBatch(Array(B).fill(''), { maxNewTokens: tokens, temperature: 1, seed: 0 });
  speed[B] = B * tokens / ((performance.now() - started) / 1000);
}
console.log(JSON.stringify(speed));
"""

# The page in Chromium: prints the tokens/s that window.rnnlm.measure reports at batch 1.
BROWSER = """
import { launch, serve } from './test/chromium.js';
const [folder, tokens] = [process.argv[1], Number(process.argv[2])];
const server = await serve(folder);
const browser = await launch();
try {
  const page = await browser.context.newPage();
  await page.goto(server.url);
  await page.waitForSelector('body[data-state="ready"]', { timeout: 60000 });
  const speed = await page.evaluate((n) => window.rnnlm.measure(n), tokens);
  const isolated = await page.evaluate(() => crossOriginIsolated);
  console.log(JSON.stringify({ speed, isolated }));
} finally {
  await browser.close();
  server.stop();
}
"""


def node(script: str, *args: str) -> dict:
    run = subprocess.run(["node", "--input-type=module", "-e", script, *args], cwd=PACKAGE, capture_output=True,
                         text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"node failed: {run.stderr.strip()[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def python_round(generator: Generator, tokens: int) -> dict:
    speed = {}
    for B in BATCH_SIZES:
        start = time.perf_counter()
        if B == 1:
            generator.generate("", max_new_tokens=tokens, temperature=1.0, seed=0)
        else:
            generator.generate_batch([""] * B, max_new_tokens=tokens, temperature=1.0, seed=0)
        speed[B] = B * tokens / (time.perf_counter() - start)
    return speed


def main(tokens: int = 1000, rounds: int = 3) -> str:
    """A markdown section: tokens/s of Python and Node at batch 1 and 32, and of the browser at batch 1."""
    heading = f"### JavaScript generation (H={HIDDEN}, V={VOCAB}, {tokens} tokens a sequence, one thread)"
    missing = ("node is absent" if shutil.which("node") is None else
               "serve/js/node_modules is absent (make install)" if not (PACKAGE / "node_modules").is_dir() else None)
    if missing:
        return f"{heading}\n\nSkipped: {missing}."
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(VOCAB, HIDDEN)).eval()
    tokenizer = CharTokenizer("".join(chr(32 + i) for i in range(VOCAB - 1)) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_export(model, tokenizer, Path(tmp) / "model")
        generator = Generator.load(folder, threads=1)
        python_round(generator, 16)  # warm-up
        py, js = {B: [] for B in BATCH_SIZES}, {B: [] for B in BATCH_SIZES}
        for _ in range(rounds):
            for B, s in python_round(generator, tokens).items():
                py[B].append(s)
            for B, s in node(NODE_ROUND, str(folder), str(tokens)).items():
                js[int(B)].append(s)
        rows = ["| runtime | batch | tokens/s | ÷ Python |", "|---|---:|---:|---:|"]
        for B in BATCH_SIZES:
            p, n = statistics.median(py[B]), statistics.median(js[B])
            rows += [f"| Python (onnxruntime {_ort_version()}) | {B} | {p:,.0f} | 1.00 |",
                     f"| Node (onnxruntime-node 1.30.0) | {B} | {n:,.0f} | {n / p:.2f} |"]
        if CHROMIUM.exists():
            page = node(BROWSER, str(folder), str(tokens))
            threads = "WASM threads" if page["isolated"] else "one WASM thread (not cross-origin isolated)"
            p = statistics.median(py[1])
            rows.append(f"| Chromium page (onnxruntime-web 1.30.0, {threads}) | 1 | {page['speed']:,.0f} | "
                        f"{page['speed'] / p:.2f} |")
            note = "The browser's number is the page's own measure (`window.rnnlm.measure`), in headless Chromium."
        else:
            note = f"No Chromium at {CHROMIUM}: the browser was not measured (apt-get install -y chromium)."
    return "\n".join([heading, "", *rows, "", f"Medians over {rounds} rounds. {note}"])


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(main(args.tokens, args.rounds))
