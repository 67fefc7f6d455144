import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { CharTokenizer } from '../src/tokenizers/char.js';
import { SentencePieceTokenizer } from '../src/tokenizers/sentencepiece.js';
import { decodeBytes } from '../src/tokenizers/utf8.js';
import { exportOf, expected, SKIP } from './fixture.js';

const vocabulary = {
  char: () => CharTokenizer.fromBytes(readFileSync(exportOf('char/tokenizer.json'))),
  bpe: () => SentencePieceTokenizer.fromBytes(readFileSync(exportOf('bpe/vocab.json'))),
  unigram: () => SentencePieceTokenizer.fromBytes(readFileSync(exportOf('unigram.vocab.json'))),
};

for (const kind of ['char', 'bpe', 'unigram']) {
  test(`${kind}: ids equal Python's for every text, non-ASCII included`, { skip: SKIP }, () => {
    const tokenizer = vocabulary[kind]();
    const cases = expected.tokenizers[kind];
    cases.texts.forEach((text, k) => assert.deepEqual(tokenizer.encode(text), cases.ids[k], JSON.stringify(text)));
  });

  test(`${kind}: decoded text equals Python's, invalid and cut UTF-8 included`, { skip: SKIP }, () => {
    const tokenizer = vocabulary[kind]();
    const cases = expected.tokenizers[kind];
    cases.id_lists.forEach((ids, k) => assert.equal(tokenizer.decode(ids), cases.decoded[k], JSON.stringify(ids)));
  });
}

test('sentencepiece writes one U+FFFD per invalid byte, where TextDecoder collapses them', () => {
  const cut = [0xe6, 0x97]; // the first two bytes of a three-byte character
  assert.equal(decodeBytes(cut), '\ufffd\ufffd');
  assert.equal(new TextDecoder().decode(Uint8Array.from(cut)), '\ufffd');
  assert.equal(decodeBytes([0xe6, 0x97, 0xa5]), '日');
  assert.equal(decodeBytes([0xed, 0xa0, 0x80]), '\ufffd\ufffd\ufffd'); // a surrogate's encoding
  assert.equal(decodeBytes([0xc0, 0xaf]), '\ufffd\ufffd'); // overlong
  assert.equal(decodeBytes([0xf0, 0x9f, 0x98, 0x80, 0x41]), '😀A');
});

test('char: unknown characters are named, dropped or replaced', () => {
  const tokenizer = new CharTokenizer('\n abc');
  assert.throws(() => tokenizer.encode('abé😀'), /2 character\(s\) absent from the vocabulary: "é😀" \(U\+00E9, U\+1F600\); remove them, or pass unknown: 'drop' or 'replace'/);
  assert.deepEqual(tokenizer.encode('aé😀b', 'drop'), [2, 3]);
  assert.deepEqual(tokenizer.encode('aé😀b', 'replace'), [2, 1, 1, 3]);
  assert.equal(tokenizer.decode([2, 1, 0]), 'a \n');
});

test('a vocabulary this runtime cannot reproduce is refused, naming the setting', () => {
  const spec = { format: 'sentencepiece-vocab/1', model_type: 'bpe', byte_fallback: true, unk_surface: ' \u2047 ',
    normalizer: 'nmt_nfkc', add_dummy_prefix: false, remove_extra_whitespaces: false, escape_whitespaces: true,
    treat_whitespace_as_suffix: false, pieces: [['<unk>', 0, 'unknown']] };
  assert.throws(() => new SentencePieceTokenizer(spec), /normalizer "nmt_nfkc", which this runtime does not implement/);
  assert.throws(() => new SentencePieceTokenizer({ ...spec, format: 'x' }), /not a sentencepiece vocabulary/);
});
