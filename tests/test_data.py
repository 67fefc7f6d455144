import hashlib
import http.server
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from conftest import BLOCK_TORCH
from rnnlm import corpus as corpus_module
from rnnlm.corpus import prepare, resolve_corpus
from rnnlm.data import RNNLMDataModule, StreamDataset
from rnnlm.errors import RnnlmError
from rnnlm.tokenizers import load_tokenizer


def test_prepare_splits_90_10_and_reuses_its_files(small_corpus, tmp_path):
    folder = prepare(str(small_corpus), "char", 0, tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    text = small_corpus.read_text()
    assert meta["train_chars"] == int(0.9 * len(text)) and meta["val_chars"] == len(text) - meta["train_chars"]
    tok = load_tokenizer(folder)
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    assert tok.decode(train.tolist()) == text[: meta["train_chars"]]
    assert tok.decode(val.tolist()) == text[meta["train_chars"] :]
    mtime = (folder / "train.bin").stat().st_mtime_ns
    assert prepare(str(small_corpus), "char", 0, tmp_path) == folder
    assert (folder / "train.bin").stat().st_mtime_ns == mtime  # written once, reused


def test_prepare_encodes_in_chunks_like_the_whole(small_corpus, tmp_path, monkeypatch):
    whole = prepare(str(small_corpus), "bpe", 400, tmp_path / "a")
    monkeypatch.setattr(corpus_module, "CHUNK_CHARS", 777)  # many chunks, cut at newlines
    chunked = prepare(str(small_corpus), "bpe", 400, tmp_path / "b")
    tok = load_tokenizer(whole)
    text = small_corpus.read_text()
    n_train = json.loads((whole / "meta.json").read_text())["train_chars"]
    assert np.fromfile(chunked / "train.bin", np.uint16).tolist() == tok.encode(text[:n_train])


@pytest.fixture
def corpus_server(corpus):
    """The tests' corpus served over HTTP on a loopback port: (url, sha256, requests served)."""
    body, served = corpus.read_bytes(), []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.txt", hashlib.sha256(body).hexdigest(), served
    server.shutdown()
    server.server_close()


def test_named_corpus_is_downloaded_checked_cached_and_falls_back_offline(corpus_server, tmp_path, monkeypatch,
                                                                         capsys):
    url, sha256, served = corpus_server
    monkeypatch.setitem(corpus_module.CORPORA, "shakespeare", {"url": url, "sha256": sha256})
    cached = tmp_path / "corpora" / "shakespeare.txt"
    assert resolve_corpus("shakespeare", tmp_path) == cached and len(served) == 1  # downloaded
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256
    assert resolve_corpus("shakespeare", tmp_path) == cached and len(served) == 1  # then read from the cache
    cached.write_text("tampered")  # a cached copy that fails its sha256 is fetched again
    assert resolve_corpus("shakespeare", tmp_path) == cached and len(served) == 2
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256

    monkeypatch.setitem(corpus_module.CORPORA, "shakespeare", {"url": url, "sha256": "0" * 64})
    cached.unlink()
    with pytest.raises(RnnlmError, match=r"does not match its sha256 0{64}; try again later"):
        resolve_corpus("shakespeare", tmp_path)  # a download that fails its checksum is refused, not kept
    assert not cached.exists()

    closed = {"url": "http://127.0.0.1:9/input.txt", "sha256": sha256}  # port 9 (discard): nothing listens
    monkeypatch.setitem(corpus_module.CORPORA, "shakespeare", closed)
    path = resolve_corpus("shakespeare", tmp_path)  # offline: the fallback is loud
    assert path.name == "pydoc-topics.txt" and path.stat().st_size > 100_000
    assert "TRAINING ON THE OFFLINE FALLBACK" in capsys.readouterr().err


def test_prepare_command_imports_neither_torch_nor_lightning(small_corpus, tmp_path):
    block = BLOCK_TORCH + """
from rnnlm.cli import main
main(["prepare", "--config", sys.argv[2], "--corpus", sys.argv[1]])
print(sorted(m for m in sys.modules if m.partition(".")[0] in {"torch", "lightning"}))
"""
    config = tmp_path / "tiny.yaml"
    config.write_text(f"data:\n  tokenizer: bpe\n  vocab_size: 350\n  data_dir: {tmp_path / 'data'}\n")
    out = subprocess.run([sys.executable, "-c", block, str(small_corpus), str(config)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == 350 and out.stdout.endswith("[]\n")
    assert (tmp_path / "data").is_dir()


@pytest.mark.parametrize(
    "corpus, message",
    [
        ("no-such-corpus", r"unknown corpus 'no-such-corpus': give a text file's path or one of \['shakespeare'\]"),
        ("missing/file.txt", r"corpus file missing/file.txt does not exist"),
    ],
)
def test_unknown_or_missing_corpus(corpus, message, tmp_path):
    with pytest.raises(RnnlmError, match=message):
        resolve_corpus(corpus, tmp_path)


def test_empty_and_non_utf8_corpus_leave_nothing_behind(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(RnnlmError, match=r"corpus .*empty.txt is empty"):
        prepare(str(empty), "char", 0, tmp_path / "data")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"hello\n" * 1000 + "café".encode("latin-1"))
    with pytest.raises(RnnlmError, match=r"not UTF-8: byte 0xe9 at offset 6003 .*convert the file to UTF-8"):
        prepare(str(latin1), "char", 0, tmp_path / "data")
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))


def test_unsupported_vocab_leaves_no_folder(small_corpus, tmp_path):
    with pytest.raises(RnnlmError, match="lower --data.vocab_size"):
        prepare(str(small_corpus), "bpe", 60000, tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_streams_are_contiguous_windows():
    ids = np.arange(1000, dtype=np.uint16)  # token i at position i
    ds = StreamDataset(ids, batch_size=4, seq_len=10)
    assert ds.stream_len == 999 // 4 == 249 and len(ds) == 24
    batches = list(ds)
    x0, y0 = batches[0]
    assert x0.shape == (4, 10) and x0.dtype == torch.int64
    assert x0[:, 0].tolist() == [0, 249, 498, 747]  # B streams start a stream length apart
    assert torch.equal(y0, x0 + 1)
    for k in range(1, len(batches)):  # batch k continues each stream where batch k-1 stopped
        assert torch.equal(batches[k][0][:, 0], batches[k - 1][0][:, -1] + 1)


@pytest.mark.parametrize("n_ids", [1003, 1000])  # 1002 pairs fill 6 streams exactly; 999 need padding
def test_ranks_own_disjoint_streams_and_validation_covers_every_pair_once(n_ids):
    ids = np.arange(n_ids, dtype=np.uint16)
    seen = []
    for rank in range(2):
        val = StreamDataset(ids, batch_size=3, seq_len=16, rank=rank, world_size=2, drop_last=False)
        for x, y in val:
            keep = y != -100
            assert torch.equal(y[keep], x[keep] + 1)
            seen += x[keep].tolist()
        train = StreamDataset(ids, batch_size=3, seq_len=16, rank=rank, world_size=2)
        first = next(iter(train))[0][:, 0].tolist()
        assert first == [(rank * 3 + b) * ((n_ids - 1) // 6) for b in range(3)]
    assert sorted(seen) == list(range(n_ids - 1))


def test_a_corpus_too_short_for_one_batch(small_corpus, tmp_path):
    dm = RNNLMDataModule(corpus=str(small_corpus), batch_size=64, seq_len=512, data_dir=str(tmp_path))
    n_train = int(0.9 * len(small_corpus.read_text()))
    with pytest.raises(RnnlmError, match=rf"too short: its {n_train} training tokens fill no batch of 1 x batch_size"):
        dm.setup("fit")


def test_unknown_tokenizer(tmp_path):
    with pytest.raises(RnnlmError, match=r"unknown tokenizer 'word': use one of char, bpe, unigram"):
        RNNLMDataModule(tokenizer="word")
