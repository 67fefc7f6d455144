"""serve/js against the Python runtime: node's own test runner over serve/js/test/, with small
exports and the Python runtime's texts written by tests/js_fixture.py; the browser tests drive the
page of serve/web in Debian's headless Chromium. Skipped, with the reason, where Node, the package's
node_modules (`make install`) or Chromium is absent."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from js_fixture import write  # tests/ is on sys.path, as for conftest.py

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "serve" / "js"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = PACKAGE / "test" / "artifacts"  # screenshots of the page

NODE = shutil.which("node")
pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is absent: install Node.js >= 20 with npm"),
    pytest.mark.skipif(not (PACKAGE / "node_modules").is_dir(),
                       reason="serve/js/node_modules is absent: run `make install` (npm ci in serve/js)"),
]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("js")
    write(out)
    return out


def node_test(fixture: Path, *files: str) -> None:
    env = {**os.environ, "RNNLM_JS_FIXTURE": str(fixture), "RNNLM_ARTIFACTS": str(ARTIFACTS),
           "CHROMIUM": str(CHROMIUM)}
    run = subprocess.run([NODE, "--test", *files], cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"node --test {' '.join(files)} failed:\n{run.stdout[-20000:]}\n{run.stderr[-5000:]}"
    assert "# fail 0" in run.stdout and "# skipped 0" in run.stdout, run.stdout[-5000:]


@pytest.mark.slow
def test_node(fixture) -> None:
    """The sampler's vectors, tokenizer ids and text, the manifest schema and the text of >= 20 requests, as Python."""
    node_test(fixture, *(f"test/{name}.test.js" for name in ("sampler", "tokenizers", "manifest", "generate")))


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium (README.md)")
def test_browser(fixture) -> None:
    """The page's text equals Python's in headless Chromium; screenshots in serve/js/test/artifacts/."""
    node_test(fixture, "test/browser.test.js")
    assert (ARTIFACTS / "page-char.png").is_file()
