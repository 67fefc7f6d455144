/**
 * sentencepiece's bpe and unigram encoders and its decoder, from the vocabulary file that
 * `rnnlm export` writes beside tokenizer.model (format sentencepiece-vocab/1, serve/js/README.md).
 * Ids equal Python sentencepiece's for rnnlm's settings (identity normalizer, no dummy prefix,
 * spaces as U+2581, byte fallback), and so does decoded text, U+FFFD per invalid byte included.
 * @module
 */

import { decodeBytes, utf8, utf8Length } from './utf8.js';

export const VOCABULARY_FORMAT = 'sentencepiece-vocab/1';
const SPACE = '\u2581';
const UNK_PENALTY = 10; // sentencepiece's kUnkPenalty: an unknown character scores min_score - 10
const FLT_MIN = 1.1754943508222875e-38; // sentencepiece's initial max_score_, float32's smallest normal
const TYPES = ['normal', 'unknown', 'control', 'user_defined', 'byte', 'unused'];
// Settings this implementation does not reproduce, and the value rnnlm trains with.
const FIXED = { normalizer: 'identity', add_dummy_prefix: false, remove_extra_whitespaces: false,
  escape_whitespaces: true, treat_whitespace_as_suffix: false };
const ADVICE = 're-export the model with `rnnlm export CKPT --out DIR`';

const BYTE_PIECE = /^<0x([0-9A-F]{2})>$/;

export class SentencePieceTokenizer {
  /**
   * @param {object} spec the parsed vocabulary file
   */
  constructor(spec) {
    if (spec === null || typeof spec !== 'object' || spec.format !== VOCABULARY_FORMAT) {
      throw new Error(`not a sentencepiece vocabulary of format ${VOCABULARY_FORMAT}; ${ADVICE}`);
    }
    if (spec.model_type !== 'bpe' && spec.model_type !== 'unigram') {
      throw new Error(`the vocabulary has model_type ${JSON.stringify(spec.model_type)}; this runtime reads bpe and unigram`);
    }
    for (const [key, value] of Object.entries(FIXED)) {
      if (spec[key] !== value) {
        throw new Error(`the vocabulary has ${key} ${JSON.stringify(spec[key])}, which this runtime does not `
          + `implement (it needs ${JSON.stringify(value)}, as rnnlm trains); use the Python runtime for this model`);
      }
    }
    if (!Array.isArray(spec.pieces) || spec.pieces.length === 0 || !spec.pieces.every(validPiece)) {
      throw new Error(`the vocabulary's pieces must be a list of [piece, score, type]; ${ADVICE}`);
    }
    this.kind = spec.model_type;
    this.byteFallback = spec.byte_fallback === true;
    this.unkSurface = typeof spec.unk_surface === 'string' ? spec.unk_surface : ' \u2047 ';
    /** @type {string[]} */ this.pieces = spec.pieces.map((p) => p[0]);
    /** @type {number[]} */ this.scores = spec.pieces.map((p) => p[1]);
    /** @type {string[]} */ this.types = spec.pieces.map((p) => p[2]);
    /** Pieces the segmenters may produce: normal and user-defined (sentencepiece's pieces_). @type {Map<string, number>} */
    this.vocab = new Map();
    /** @type {Int16Array} byte value of each byte piece, -1 for the others */
    this.byteOf = new Int16Array(this.pieces.length).fill(-1);
    /** @type {number[]} id of each byte's piece */
    this.byteIds = new Array(256).fill(-1);
    this.userDefined = [];
    this.unkId = -1;
    let minScore = Infinity;
    this.pieces.forEach((piece, id) => {
      const type = this.types[id];
      if (type === 'normal' || type === 'user_defined') this.vocab.set(piece, id);
      if (type === 'user_defined') this.userDefined.push(piece);
      if (type === 'normal') minScore = Math.min(minScore, this.scores[id]);
      if (type === 'unknown') this.unkId = id;
      if (type === 'unused' && this.kind === 'bpe') {
        throw new Error(`the vocabulary has an unused piece (${id}), which this bpe encoder does not implement; ${ADVICE}`);
      }
      const byte = type === 'byte' ? BYTE_PIECE.exec(piece) : null;
      if (byte) { this.byteOf[id] = parseInt(byte[1], 16); this.byteIds[this.byteOf[id]] = id; }
    });
    if (this.unkId < 0) throw new Error(`the vocabulary has no unknown piece; ${ADVICE}`);
    if (this.byteFallback && this.byteIds.includes(-1)) throw new Error(`the vocabulary lacks byte pieces; ${ADVICE}`);
    this.userDefined.sort((a, b) => b.length - a.length); // longest match first
    this.unkScore = Math.fround(minScore - UNK_PENALTY);
    this.maxChars = Math.max(...this.pieces.map((p) => p.length));
  }

  /**
   * @param {Uint8Array} bytes vocab.json
   * @returns {SentencePieceTokenizer}
   */
  static fromBytes(bytes) {
    let spec;
    try { spec = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)); } catch { spec = null; }
    return new SentencePieceTokenizer(spec);
  }

  get vocabSize() { return this.pieces.length; }

  /**
   * Token ids of text, as sentencepiece's EncodeAsIds gives them. Unseen characters become byte
   * pieces (byte fallback), so `unknown` never applies.
   * @param {string} text
   * @returns {number[]}
   */
  encode(text) {
    const normalized = text.replaceAll(' ', SPACE);
    const segments = this.kind === 'bpe' ? this.bpe(normalized) : this.unigram(normalized);
    const ids = [];
    let previousUnknown = false;
    for (const [piece, id] of segments) {
      const unknown = id === this.unkId;
      if (unknown && this.byteFallback) {
        for (const b of utf8(piece)) ids.push(this.byteIds[b]);
      } else if (!(unknown && previousUnknown)) { // a run of unknown pieces is one unknown id
        ids.push(id);
      }
      previousUnknown = unknown;
    }
    return ids;
  }

  /**
   * The symbols the segmenters start from: a user-defined piece where one begins (longest first),
   * else one character. @param {string} text @returns {{piece: string, frozen: boolean}[]}
   */
  symbols(text) {
    const out = [];
    for (let i = 0; i < text.length;) {
      const user = this.userDefined.find((p) => text.startsWith(p, i));
      const piece = user ?? String.fromCodePoint(text.codePointAt(i));
      out.push({ piece, frozen: user !== undefined });
      i += piece.length;
    }
    return out;
  }

  /**
   * BPE: merge the adjacent pair whose merged piece scores highest (ties: the leftmost) until no
   * pair is a piece. @param {string} text @returns {[string, number][]}
   */
  bpe(text) {
    const symbols = this.symbols(text).map((s, i, all) => ({ ...s, prev: i - 1, next: i + 1 < all.length ? i + 1 : -1 }));
    const agenda = new PairHeap();
    const consider = (left, right) => {
      if (left < 0 || right < 0 || symbols[left].frozen || symbols[right].frozen) return;
      const piece = symbols[left].piece + symbols[right].piece;
      const id = this.vocab.get(piece);
      if (id !== undefined) agenda.push({ left, right, score: this.scores[id], size: piece.length });
    };
    for (let i = 1; i < symbols.length; i++) consider(i - 1, i);
    while (agenda.size > 0) {
      const top = agenda.pop();
      const left = symbols[top.left];
      const right = symbols[top.right];
      if (left.piece === '' || right.piece === '' || left.piece.length + right.piece.length !== top.size) continue;
      left.piece += right.piece;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.left;
      right.piece = '';
      consider(left.prev, top.left);
      consider(top.left, left.next);
    }
    /** @type {[string, number][]} */
    const out = [];
    for (let i = symbols.length ? 0 : -1; i >= 0; i = symbols[i].next) {
      out.push([symbols[i].piece, this.vocab.get(symbols[i].piece) ?? this.unkId]);
    }
    return out;
  }

  /**
   * Unigram: the Viterbi segmentation, scored as sentencepiece scores it (float32 path scores;
   * a user-defined piece scores length_in_bytes * FLT_MIN - 0.1; an unknown character min - 10).
   * @param {string} text @returns {[string, number][]}
   */
  unigram(text) {
    const starts = []; // code-unit offset of each position (character boundaries)
    for (let i = 0; i < text.length; i += text.codePointAt(i) > 0xffff ? 2 : 1) starts.push(i);
    starts.push(text.length);
    const size = starts.length - 1;
    const score = new Float64Array(size + 1);
    const from = new Int32Array(size + 1).fill(-1);
    const ids = new Int32Array(size + 1);
    const offer = (end, begin, candidate, id) => {
      if (from[end] === -1 || candidate > score[end]) { score[end] = Math.fround(candidate); from[end] = begin; ids[end] = id; }
    };
    for (let k = 0; k < size; k++) {
      const here = score[k];
      let single = false;
      const maxEnd = Math.min(size, k + this.maxChars);
      for (let e = k + 1; e <= maxEnd; e++) {
        const piece = text.slice(starts[k], starts[e]);
        const id = this.vocab.get(piece);
        if (id === undefined) continue;
        const s = this.types[id] === 'user_defined' ? Math.fround(utf8Length(piece) * FLT_MIN) - 0.1 : this.scores[id];
        offer(e, k, s + here, id);
        if (e === k + 1) single = true;
      }
      if (!single) offer(k + 1, k, Math.fround(this.unkScore + here), this.unkId);
    }
    /** @type {[string, number][]} */
    const out = [];
    for (let e = size; e > 0; e = from[e]) out.push([text.slice(starts[from[e]], starts[e]), ids[e]]);
    return out.reverse();
  }

  /**
   * Text of ids, as sentencepiece's DecodeIds writes it: control pieces are empty, the unknown
   * piece is unk_surface, U+2581 is a space, and each run of byte pieces is UTF-8 with one U+FFFD
   * per invalid byte.
   * @param {number[]} ids
   * @returns {string}
   */
  decode(ids) {
    let text = '';
    let bytes = [];
    for (const id of ids) {
      const b = this.byteOf[id];
      if (b >= 0) { bytes.push(b); continue; }
      if (bytes.length) { text += decodeBytes(bytes); bytes = []; }
      const type = this.types[id];
      if (type === 'control') continue;
      text += type === 'unknown' ? this.unkSurface : this.pieces[id].replaceAll(SPACE, ' ');
    }
    if (bytes.length) text += decodeBytes(bytes);
    return text;
  }
}

function validPiece(p) {
  return Array.isArray(p) && p.length === 3 && typeof p[0] === 'string' && typeof p[1] === 'number'
    && TYPES.includes(p[2]);
}

/** A max-heap of merge candidates: the highest score first, ties the lowest left index. */
class PairHeap {
  constructor() { /** @type {{left: number, right: number, score: number, size: number}[]} */ this.items = []; }
  get size() { return this.items.length; }
  static before(a, b) { return a.score > b.score || (a.score === b.score && a.left < b.left); }
  push(item) {
    const h = this.items;
    h.push(item);
    for (let i = h.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!PairHeap.before(h[i], h[parent])) break;
      [h[i], h[parent]] = [h[parent], h[i]];
      i = parent;
    }
  }
  pop() {
    const h = this.items;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0) {
      h[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && PairHeap.before(h[l], h[m])) m = l;
        if (r < h.length && PairHeap.before(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}
