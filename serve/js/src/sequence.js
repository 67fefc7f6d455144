/**
 * One sequence being generated: prompt, options, key, recurrent state, tokens and emitted text.
 * Text is released as the Python runtime releases it (src/rnnlm/runtime/sequence.py): byte pieces
 * are held until they form whole characters (at most 4), and text that could begin a stop string
 * is held until it is known not to, so the pieces join to exactly the final text, which never
 * contains a stop string.
 * @module
 */

import { seedKey } from './sampler.js';
import { REPLACEMENT } from './tokenizers/utf8.js';

const MAX_CHAR_BYTES = 4; // a UTF-8 character spans at most 4 byte pieces

export class Sequence {
  /**
   * @param {number[]} promptIds
   * @param {{temperature: number, topK: number, topP: number, maxNewTokens: number, stop: string[], seed: bigint}} options
   * @param {{decode(ids: number[]): string}} tokenizer
   * @param {Float32Array[]} state one zero array per state tensor, its row of the batch (e.g. L x H)
   */
  constructor(promptIds, options, tokenizer, state) {
    this.options = options;
    this.seed = options.seed;
    this.key = seedKey(options.seed);
    this.promptIds = promptIds;
    /** @type {number[]} the sampled tokens */
    this.tokenIds = [];
    /** the text emitted so far */
    this.text = '';
    /** @type {null|'stop'|'length'|'error'} */
    this.finishReason = null;
    /** @type {string|null} why the sequence ended with 'error' */
    this.error = null;
    /** the recurrent state after the last step, one array per state tensor of the manifest */
    this.state = state;
    /** @type {Float32Array|null} the logits of the last step: the distribution of the next token */
    this.logits = null;
    this.promptFed = 0;
    this.tokenizer = tokenizer;
    /** @type {number[]} tokens whose text is not yet whole characters */
    this.undecoded = [];
    this.held = ''; // decoded text not yet emitted: it may begin a stop string
  }

  get finished() { return this.finishReason !== null; }

  /** Prompt tokens remain to be fed: this step's logits are not sampled. */
  get prefilling() { return this.promptFed < this.promptIds.length; }

  /** The token fed at the next step. */
  get inputId() {
    return this.prefilling ? this.promptIds[this.promptFed] : this.tokenIds[this.tokenIds.length - 1];
  }

  /**
   * Take a sampled token; return the text it releases ('' while text is held).
   * @param {number} token
   * @returns {string}
   */
  accept(token) {
    this.tokenIds.push(token);
    this.undecoded.push(token);
    const text = this.tokenizer.decode(this.undecoded);
    if (!text.endsWith(REPLACEMENT) || this.undecoded.length >= MAX_CHAR_BYTES) {
      this.undecoded = [];
      this.held += text;
    }
    if (this.tokenIds.length >= this.options.maxNewTokens) {
      this.finishReason = 'length';
      if (this.undecoded.length) this.held += this.tokenizer.decode(this.undecoded);
    }
    return this.release();
  }

  /** End the sequence with an error; its text so far stays. @param {string} message */
  fail(message) {
    this.finishReason = 'error';
    this.error = message;
  }

  /** Emit held text up to a stop string (then finish), or up to where a stop string could begin. */
  release() {
    const { held } = this;
    const { stop } = this.options;
    const found = stop.map((s) => held.indexOf(s)).filter((i) => i >= 0);
    let cut;
    if (found.length) {
      this.finishReason = 'stop';
      cut = Math.min(...found);
    } else if (this.finishReason !== null || stop.length === 0) {
      cut = held.length;
    } else {
      cut = held.length - partialStop(held, stop);
    }
    this.held = held.slice(cut);
    this.text += held.slice(0, cut);
    return held.slice(0, cut);
  }
}

/** The length of the longest end of text that is a proper beginning of a stop string. */
function partialStop(text, stop) {
  const longest = Math.max(...stop.map((s) => s.length));
  for (let n = Math.min(text.length, longest - 1); n > 0; n--) {
    const end = text.slice(-n);
    if (stop.some((s) => s.startsWith(end))) return n;
  }
  return 0;
}
