/**
 * Sampling options of one sequence, checked as the Python runtime checks SamplingParams, with
 * each error naming the option, its valid range and what to do.
 * @module
 */

import { SEEDS, checkSeed } from './sampler.js';

/** @typedef {import('./index.js').Options} Options */
export const OPTION_NAMES = ['maxNewTokens', 'temperature', 'topK', 'topP', 'stop', 'seed', 'unknown'];

const show = (v) => (typeof v === 'bigint' ? `${v}n` : typeof v === 'number' ? String(v) : JSON.stringify(v) ?? String(v));

/**
 * Check temperature, topK, topP, maxNewTokens and stop; throw the first problem. Returns the options.
 * @param {{temperature: number, topK: number, topP: number, maxNewTokens: number, stop?: string[]}} o
 * @param {number} cap the most tokens a request may ask for
 */
export function checkOptions(o, cap) {
  if (typeof o.temperature !== 'number' || !Number.isFinite(o.temperature) || o.temperature < 0) {
    throw new Error(`temperature must be a number >= 0 (0 is greedy), got ${show(o.temperature)}`);
  }
  if (!Number.isSafeInteger(o.topK) || o.topK < 0) {
    throw new Error(`top_k must be an integer >= 0 (0 keeps every token), got ${show(o.topK)}`);
  }
  if (typeof o.topP !== 'number' || !(o.topP > 0 && o.topP <= 1)) {
    throw new Error(`top_p must lie in (0, 1] (1 keeps every token), got ${show(o.topP)}`);
  }
  if (!Number.isSafeInteger(o.maxNewTokens) || o.maxNewTokens < 1 || o.maxNewTokens > cap) {
    throw new Error(`max_new_tokens must be an integer from 1 to ${cap} (this generator's cap), got `
      + `${show(o.maxNewTokens)}; ask for fewer tokens or raise the cap (maxNewTokensCap)`);
  }
  if (o.stop !== undefined && !(Array.isArray(o.stop) && o.stop.every((s) => typeof s === 'string' && s.length > 0))) {
    throw new Error(`stop must be a list of non-empty strings, got ${show(o.stop)}`);
  }
  return o;
}

/**
 * A seed of 64 random bits.
 * @param {(words: Uint32Array) => Uint32Array} fill the platform's entropy (crypto.getRandomValues)
 * @returns {bigint}
 */
export function freshSeed(fill) {
  const words = fill(new Uint32Array(2));
  return (BigInt(words[0]) << 32n) | BigInt(words[1]);
}

/**
 * The options of one request: defaults where a field is undefined, checked; the seed a BigInt,
 * drawn fresh when none is given (so that it can be reported and the text drawn again).
 * @param {Options} given
 * @param {{temperature: number, topK: number, topP: number, maxNewTokens: number}} defaults
 * @param {number} cap
 * @param {(words: Uint32Array) => Uint32Array} entropy fills words with random bits, for a seed left out
 * @returns {{temperature: number, topK: number, topP: number, maxNewTokens: number, stop: string[], seed: bigint}}
 */
export function resolveOptions(given, defaults, cap, entropy) {
  if (given === null || typeof given !== 'object') throw new Error(`options must be an object, got ${show(given)}`);
  const unknown = Object.keys(given).filter((k) => !OPTION_NAMES.includes(k));
  if (unknown.length) throw new Error(`unknown option(s) ${unknown.join(', ')}: the options are ${OPTION_NAMES.join(', ')}`);
  const pick = (k) => (given[k] === undefined || given[k] === null ? defaults[k] : given[k]);
  const stop = given.stop === undefined || given.stop === null ? [] : typeof given.stop === 'string' ? [given.stop] : given.stop;
  const o = checkOptions({ temperature: pick('temperature'), topK: pick('topK'), topP: pick('topP'),
    maxNewTokens: pick('maxNewTokens'), stop }, cap);
  const seed = given.seed === undefined || given.seed === null ? freshSeed(entropy) : checkSeed(given.seed);
  return { ...o, stop: [...o.stop], seed };
}

/**
 * Item k of a batch seeded s: (s + k) mod 2^64.
 * @param {bigint} seed @param {number} k @returns {bigint}
 */
export const offsetSeed = (seed, k) => (seed + BigInt(k)) % SEEDS;
