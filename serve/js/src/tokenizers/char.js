/**
 * The char tokenizer: one token per character (Unicode code point), read from the export's
 * tokenizer.json, {"type": "char", "chars": "..."}, as Python's CharTokenizer writes it.
 * @module
 */

export const UNKNOWN_POLICIES = ['error', 'drop', 'replace'];

/** Code-point order, as Python's sorted() orders characters. */
const byCodePoint = (a, b) => a.codePointAt(0) - b.codePointAt(0);

const hex = (ch) => `U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}`;

export class CharTokenizer {
  /** @param {string} chars the vocabulary, one character per id */
  constructor(chars) {
    this.kind = 'char';
    this.chars = Array.from(chars);
    if (this.chars.length === 0) throw new Error('a char vocabulary needs at least one character: re-export the model');
    /** @type {Map<string, number>} */
    this.ids = new Map(this.chars.map((ch, i) => [ch, i]));
    if (this.ids.size !== this.chars.length) throw new Error('the char vocabulary lists a character twice: re-export the model');
    this.replacement = this.ids.has(' ') ? ' ' : this.chars[0];
  }

  /**
   * @param {Uint8Array} bytes tokenizer.json
   * @returns {CharTokenizer}
   */
  static fromBytes(bytes) {
    let spec;
    try { spec = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)); } catch { spec = null; }
    if (spec === null || typeof spec !== 'object' || spec.type !== 'char' || typeof spec.chars !== 'string') {
      throw new Error("not a char tokenizer file: expected JSON with type 'char' and a 'chars' string; re-export the model");
    }
    return new CharTokenizer(spec.chars);
  }

  get vocabSize() { return this.chars.length; }

  /**
   * Token ids of text. Characters outside the vocabulary throw (unknown "error"), are dropped
   * ("drop") or become a space, or the first character when there is none ("replace").
   * @param {string} text
   * @param {string} [unknown]
   * @returns {number[]}
   */
  encode(text, unknown = 'error') {
    const ids = [];
    const missing = new Set();
    for (const ch of text) {
      const id = this.ids.get(ch);
      if (id !== undefined) ids.push(id);
      else if (unknown === 'replace') ids.push(this.ids.get(this.replacement));
      else if (unknown !== 'drop') missing.add(ch);
    }
    if (missing.size > 0) {
      const chars = [...missing].sort(byCodePoint);
      throw new Error(`the text has ${chars.length} character(s) absent from the vocabulary: `
        + `${JSON.stringify(chars.join(''))} (${chars.slice(0, 10).map(hex).join(', ')}); `
        + "remove them, or pass unknown: 'drop' or 'replace'");
    }
    return ids;
  }

  /**
   * @param {number[]} ids
   * @returns {string}
   */
  decode(ids) {
    let text = '';
    for (const id of ids) text += this.chars[id];
    return text;
  }
}
