import pytest

from rnnlm.errors import RnnlmError
from rnnlm.tokenizers import CharTokenizer, SentencePieceTokenizer, load_tokenizer, start_token, tokenizer_from_bytes

TEXT = "Wherefore art thou, Roméo?\nDeny thy father — and refuse thy name.\n  Ça va? 日本語 ☃\n"


def test_char_round_trip_with_non_ascii(tmp_path):
    tok = CharTokenizer.train(TEXT)
    assert tok.vocab_size == len(set(TEXT))
    assert tok.chars == "".join(sorted(set(TEXT)))
    assert tok.decode(tok.encode(TEXT)) == TEXT
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(TEXT) == tok.encode(TEXT)
    assert tokenizer_from_bytes("char", tok.to_bytes()).chars == tok.chars


def test_char_unknown_characters_are_named_or_handled():
    tok = CharTokenizer.train("hello world")
    with pytest.raises(RnnlmError, match=r"absent from the vocabulary: 'xz☃'.*U\+2603.*unknown='drop'"):
        tok.encode("hex z☃")
    assert tok.decode(tok.encode("hex z☃", unknown="drop")) == "he "
    assert tok.decode(tok.encode("hex", unknown="replace")) == "he "


def test_start_token_is_the_newline_or_zero():
    assert start_token(CharTokenizer.train("ab\ncd")) == 0  # "\n" sorts first
    assert start_token(CharTokenizer.train("abc")) == 0
    tok = CharTokenizer.train("zy\n")
    assert tok.decode([start_token(tok)]) == "\n"


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_round_trip_is_exact(kind, small_corpus, tmp_path):
    lines = [line for line in small_corpus.read_text().splitlines() if line]
    tok = SentencePieceTokenizer.train(lines, vocab_size=400, model_type=kind)
    assert tok.kind == kind and tok.vocab_size == 400
    # spaces, blank lines and characters never seen in training survive (byte fallback)
    for text in [TEXT, "  two  spaces\n\n\nand newlines  ", small_corpus.read_text()[:2000]]:
        assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(TEXT) == tok.encode(TEXT)
    assert tokenizer_from_bytes(kind, tok.to_bytes()).encode(TEXT) == tok.encode(TEXT)
    assert tok.decode([start_token(tok)]) == "\n"


def test_sentencepiece_vocab_the_corpus_cannot_support():
    with pytest.raises(RnnlmError, match=r"vocabulary of 5000.*supports at most \d+ pieces; lower --data.vocab_size"):
        SentencePieceTokenizer.train(["a tiny corpus", "of two lines"], vocab_size=5000, model_type="bpe")
    with pytest.raises(RnnlmError, match=r"vocabulary of 100.*need at least 2\d\d; raise --data.vocab_size"):
        SentencePieceTokenizer.train(["a tiny corpus", "of two lines"], vocab_size=100, model_type="bpe")


def test_load_tokenizer_from_an_empty_folder(tmp_path):
    with pytest.raises(RnnlmError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
