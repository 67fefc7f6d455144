import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { drawBits, keptTokens, lowbias32, sample, seedKey, uniform } from '../src/sampler.js';

// The published vectors, read from the page that states the rule.
const page = readFileSync(new URL('../../../docs/sampling.md', import.meta.url), 'utf8');
const vectors = JSON.parse(page.split('<!-- vectors:')[1].split('```json')[1].split('```')[0]);

test('key(seed) equals the published vectors, seeds >= 2^32 included', () => {
  for (const { seed, key } of vectors.keys) assert.equal(seedKey(BigInt(seed)), Number(key), `seed ${seed}`);
});

test('bits and u equal the published vectors', () => {
  for (const v of vectors.bits) {
    const bits = drawBits(seedKey(BigInt(v.seed)), v.n, v.i);
    assert.equal(bits, Number(v.bits), `seed ${v.seed} n ${v.n} i ${v.i}`);
    assert.equal(uniform(bits), v.u);
  }
});

test('draws equal the published vectors (temperature, top-k, top-p, greedy, ties)', () => {
  const logits = Float32Array.from(vectors.logits);
  for (const d of vectors.draws) {
    const key = seedKey(BigInt(d.seed));
    const ids = d.ids.map((_, n) => sample(logits, { temperature: d.temperature, topK: d.top_k, topP: d.top_p }, key, n));
    assert.deepEqual(ids, d.ids, JSON.stringify(d));
  }
});

test('lowbias32 stays in uint32 arithmetic', () => {
  assert.equal(lowbias32(0), 0);
  assert.equal(lowbias32(2 ** 32 + 1), lowbias32(1)); // only the low word is read
  assert.ok(lowbias32(0xffffffff) >= 0);
  assert.equal(uniform(0), 0.5 / 2 ** 24);
  assert.equal(uniform(0xffffffff), (2 ** 24 - 0.5) / 2 ** 24);
});

test('a safe integer and the same BigInt give one key; bad seeds are refused with the range', () => {
  assert.equal(seedKey(12345), seedKey(12345n));
  for (const bad of [-1, 1.5, 2 ** 53, -1n, 2n ** 64n, '7', null, NaN]) {
    assert.throws(() => seedKey(bad), /seed must be an integer from 0 to 2\*\*64 - 1/);
  }
});

test('top-k keeps ties with the k-th; top-p keeps the shortest prefix reaching p', () => {
  const logits = Float32Array.from([1, 3, 3, 2, 0]);
  assert.deepEqual([...keptTokens(logits, 3, 1, 2, 1)], [0, 1, 1, 0, 0]);
  assert.deepEqual([...keptTokens(logits, 3, 1, 3, 1)], [0, 1, 1, 1, 0]);
  assert.deepEqual([...keptTokens(Float32Array.from([2, 1, 1]), 2, 1, 2, 1)], [1, 1, 1]); // tie at the k-th
  assert.deepEqual([...keptTokens(logits, 3, 1, 0, 0.01)], [0, 1, 0, 0, 0]); // ties ordered by the lower id
  assert.deepEqual([...keptTokens(logits, 3, 1e-9, 0, 0.99)], [0, 1, 1, 0, 0]); // equal largest logits share the mass
});

test('a tiny temperature draws the greedy token', () => {
  const logits = Float32Array.from([0.1, 0.3, 0.2]);
  for (let n = 0; n < 50; n++) assert.equal(sample(logits, { temperature: 5e-324, topK: 0, topP: 1 }, seedKey(9), n), 1);
});

/** The rule as docs/sampling.md writes it, token by token, with no shortcut. */
function plainSample(logits, { temperature, topK, topP }, key, n) {
  const V = logits.length;
  const m = Math.max(...logits);
  if (temperature === 0) return logits.indexOf(m);
  const kept = keptTokens(logits, m, temperature, topK, topP);
  let token = -1;
  let top = -Infinity;
  for (let i = 0; i < V; i++) {
    if (!kept[i]) continue;
    const score = (logits[i] - m) / temperature - Math.log(-Math.log(uniform(drawBits(key, n, i))));
    if (token < 0 || score > top) { top = score; token = i; }
  }
  return token;
}

test('sample equals the rule without shortcuts, on sharp and flat logits, with ties', () => {
  let x = 12345;
  const random = () => { x = lowbias32(x + 1); return x / 2 ** 32; };
  for (let trial = 0; trial < 3000; trial++) {
    const V = 1 + Math.floor(random() * 80);
    const spread = [0.1, 3, 30, 300][trial % 4];
    const logits = Float32Array.from({ length: V }, () => Math.round(random() * spread * 4) / 4); // quarter steps: ties
    const rule = { temperature: [1, 0.5, 2, 1e-3, 0][trial % 5], topK: trial % 3 ? 0 : 1 + (trial % 7), topP: trial % 4 ? 1 : 0.7 };
    const key = seedKey(trial);
    assert.equal(sample(logits, rule, key, trial), plainSample(logits, rule, key, trial), JSON.stringify({ logits: [...logits], rule }));
  }
});
