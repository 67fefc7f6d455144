/**
 * The sampling rule gumbel-lowbias32/1 (docs/sampling.md): the next token from logits, the same
 * token as the Python runtime for the same seed, draw number and logits.
 *
 *     key(seed)  = lowbias32((seed mod 2^32) ^ lowbias32((seed >> 32) ^ 0x9E3779B9))
 *     bits(n, i) = lowbias32(key + lowbias32(n + lowbias32(i)))
 *     u(n, i)    = ((bits >> 8) + 0.5) / 2^24
 *     token      = argmax over kept i of (logits[i] - m) / temperature - log(-log u(n, i))   (float64)
 *
 * All integer arithmetic is on unsigned 32-bit words: Math.imul multiplies modulo 2^32 and `>>> 0`
 * reads the result as unsigned, so the hot path needs no BigInt (only key(), once per sequence).
 * @module
 */

export const RULE = 'gumbel-lowbias32/1';
export const SEEDS = 1n << 64n; // seeds are integers in [0, 2^64)
const KEY_SALT = 0x9e3779b9;

/**
 * Chris Wellons' lowbias32 hash of a 32-bit word.
 * @param {number} x an integer; only its low 32 bits are read
 * @returns {number} an unsigned 32-bit integer
 */
export function lowbias32(x) {
  x >>>= 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * A seed as a BigInt in [0, 2^64), or an Error that says what a seed may be.
 * @param {number|bigint} seed a safe non-negative integer or a BigInt
 * @returns {bigint}
 */
export function checkSeed(seed) {
  const ok = (typeof seed === 'bigint' && seed >= 0n && seed < SEEDS)
    || (typeof seed === 'number' && Number.isSafeInteger(seed) && seed >= 0);
  if (!ok) {
    const shown = typeof seed === 'bigint' ? `${seed}n` : JSON.stringify(seed) ?? String(seed);
    throw new Error(`seed must be an integer from 0 to 2**64 - 1 (a safe integer, or a BigInt above 2**53), `
      + `got ${shown}; leave it out for a fresh one`);
  }
  return BigInt(seed);
}

/**
 * key(seed): the word every draw of a sequence starts from.
 * @param {number|bigint} seed an integer in [0, 2^64)
 * @returns {number} an unsigned 32-bit integer
 */
export function seedKey(seed) {
  const s = checkSeed(seed);
  const high = Number(s >> 32n);
  const low = Number(s & 0xffffffffn);
  return lowbias32((low ^ lowbias32(high ^ KEY_SALT)) >>> 0);
}

/**
 * bits(n, i) = lowbias32(key + lowbias32(n + lowbias32(i))), sums modulo 2^32.
 * @param {number} key key(seed)
 * @param {number} n the draw number
 * @param {number} i the token id
 * @returns {number}
 */
export function drawBits(key, n, i) {
  return lowbias32((key + lowbias32((n + lowbias32(i)) >>> 0)) >>> 0);
}

/**
 * u = ((bits >> 8) + 0.5) / 2^24, uniform in (0, 1) and exact in float64.
 * @param {number} bits
 * @returns {number}
 */
export function uniform(bits) {
  return ((bits >>> 8) + 0.5) / 16777216;
}

/** A sequence's options for the rule. @typedef {{temperature: number, topK: number, topP: number}} Rule */

/**
 * The rule's token for one row of logits.
 * @param {ArrayLike<number>} logits the row (float32 values), all finite
 * @param {Rule} rule temperature (0: argmax, no draw), topK (0: off), topP (1: off)
 * @param {number} key key(seed) of the sequence
 * @param {number} n its draw number: how many tokens it has drawn before
 * @returns {number} the token id
 */
export function sample(logits, { temperature, topK, topP }, key, n) {
  const V = logits.length;
  let best = 0;
  for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i; // ties: the lowest id
  if (temperature === 0) return best;
  const m = logits[best];
  const kept = (topK > 0 && topK < V) || topP < 1 ? keptTokens(logits, m, temperature, topK, topP) : null;
  // Two passes give the rule's argmax with few logarithms. The first bounds each kept token's score
  // from above by its u's bucket (NOISE_CEILING: no log); the second scores exactly, in id order,
  // only the tokens whose bound reaches the best exact score so far, starting from the highest bound.
  if (scratch.z.length < V) scratch = { z: new Float64Array(V), bound: new Float64Array(V), u: new Float64Array(V) };
  const { z, bound, u } = scratch;
  let first = -1; // the kept token with the highest bound (best is always kept, so there is one)
  for (let i = 0; i < V; i++) {
    if (kept !== null && !kept[i]) { bound[i] = -Infinity; continue; }
    const bits = drawBits(key, n, i);
    z[i] = (logits[i] - m) / temperature;
    u[i] = uniform(bits);
    bound[i] = z[i] + NOISE_CEILING[bits >>> (32 - BUCKET_BITS)];
    if (first < 0 || bound[i] > bound[first]) first = i;
  }
  let token = first;
  let top = z[first] - Math.log(-Math.log(u[first]));
  for (let i = 0; i < V; i++) {
    if (i === first || bound[i] + BOUND_SLACK < top) continue;
    const score = z[i] - Math.log(-Math.log(u[i]));
    if (score > top || (score === top && i < token)) { top = score; token = i; }
  }
  return token;
}

/** u's buckets by the top bits of `bits`: u < (b + 1) / 2^BUCKET_BITS in bucket b. */
const BUCKET_BITS = 12;
/** -log(-log u) at each bucket's upper end: above the noise of every u in the bucket (Infinity for the last). */
const NOISE_CEILING = Float64Array.from({ length: 2 ** BUCKET_BITS }, (_, b) => -Math.log(-Math.log((b + 1) / 2 ** BUCKET_BITS)));
/** What the rounding of a score and its bound may add up to, and far more: a bound this far below the best is below it. */
const BOUND_SLACK = 1e-6;
let scratch = { z: new Float64Array(0), bound: new Float64Array(0), u: new Float64Array(0) };

/**
 * Which tokens top-k keeps (those whose logit is at least the k-th largest), then top-p over them:
 * in descending logit order (ties by the lower id), the shortest prefix whose summed
 * w = exp((logit - m) / temperature) reaches topP times the total, summed left to right.
 * @param {ArrayLike<number>} logits
 * @param {number} m the largest logit
 * @param {number} temperature > 0
 * @param {number} topK
 * @param {number} topP
 * @returns {Uint8Array} 1 where kept
 */
export function keptTokens(logits, m, temperature, topK, topP) {
  const V = logits.length;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  let count = V;
  if (topK > 0 && topK < V) {
    const kth = logits[order[topK - 1]];
    count = topK;
    while (count < V && logits[order[count]] >= kth) count++;
  }
  if (topP < 1) {
    const w = new Float64Array(count);
    let total = 0;
    for (let j = 0; j < count; j++) { w[j] = Math.exp((logits[order[j]] - m) / temperature); total += w[j]; }
    const target = topP * total;
    let c = 0;
    for (let j = 0; j < count; j++) {
      c += w[j];
      if (c >= target) { count = j + 1; break; }
    }
  }
  const kept = new Uint8Array(V);
  for (let j = 0; j < count; j++) kept[order[j]] = 1;
  return kept;
}
