/**
 * UTF-8 the way sentencepiece decodes byte pieces: each whole character as itself, and one U+FFFD
 * for each byte that does not start a valid character (so an incomplete 3-byte character gives
 * two, where TextDecoder would give one). Mirrors sentencepiece's DecodeUTF8.
 * @module
 */

export const REPLACEMENT = '\ufffd';

const trail = (b) => (b & 0xc0) === 0x80;
const valid = (cp) => cp < 0xd800 || (cp >= 0xe000 && cp <= 0x10ffff);

/**
 * @param {number[]|Uint8Array} bytes
 * @returns {string}
 */
export function decodeBytes(bytes) {
  let text = '';
  const n = bytes.length;
  for (let i = 0; i < n;) {
    const b = bytes[i];
    let cp = -1;
    let len = 1;
    if (b < 0x80) {
      cp = b;
    } else if (n - i >= 2 && (b & 0xe0) === 0xc0 && trail(bytes[i + 1])) {
      cp = ((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f);
      len = 2;
      if (cp < 0x80) cp = -1;
    } else if (n - i >= 3 && (b & 0xf0) === 0xe0 && trail(bytes[i + 1]) && trail(bytes[i + 2])) {
      cp = ((b & 0x0f) << 12) | ((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f);
      len = 3;
      if (cp < 0x800) cp = -1;
    } else if (n - i >= 4 && (b & 0xf8) === 0xf0 && trail(bytes[i + 1]) && trail(bytes[i + 2]) && trail(bytes[i + 3])) {
      cp = ((b & 0x07) << 18) | ((bytes[i + 1] & 0x3f) << 12) | ((bytes[i + 2] & 0x3f) << 6) | (bytes[i + 3] & 0x3f);
      len = 4;
      if (cp < 0x10000) cp = -1;
    }
    if (cp < 0 || !valid(cp)) {
      text += REPLACEMENT;
      i += 1;
    } else {
      text += String.fromCodePoint(cp);
      i += len;
    }
  }
  return text;
}

/** @type {TextEncoder} */
const encoder = new TextEncoder();

/**
 * The UTF-8 length of a string.
 * @param {string} s
 * @returns {number}
 */
export const utf8Length = (s) => encoder.encode(s).length;

/**
 * The UTF-8 bytes of a string.
 * @param {string} s
 * @returns {Uint8Array}
 */
export const utf8 = (s) => encoder.encode(s);
