/**
 * What the Node and browser entry points share: the parts a program may use on its own.
 * @module
 */

export { checkManifest, FORMAT, FORMATS } from './manifest.js';
export { RULE, lowbias32, seedKey, drawBits, uniform, sample, keptTokens } from './sampler.js';
export { Sequence } from './sequence.js';
export { CharTokenizer, UNKNOWN_POLICIES } from './tokenizers/char.js';
export { SentencePieceTokenizer, VOCABULARY_FORMAT } from './tokenizers/sentencepiece.js';
export { decodeBytes } from './tokenizers/utf8.js';
