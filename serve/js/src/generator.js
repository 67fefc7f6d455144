/**
 * Generator: an exported folder loaded once (manifest, sha256 of every file, tokenizer, one
 * onnxruntime session), then text on demand, one sequence or many at a time. The same code runs on
 * onnxruntime-node and onnxruntime-web: node.js and browser.js give it the platform's onnxruntime,
 * file reader and sha256.
 *
 * `step` is the whole engine: one call of the step function for a batch of sequences, each feeding
 * its next token (a prompt token during prefill, else its last sampled token) and its own state
 * rows, then one sampled token for each sequence past its prompt. `generate`, `stream` and
 * `generateBatch` are loops over it.
 * @module
 */

import { checkManifest, EXPORT_ADVICE, MAX_MANIFEST_BYTES, MAX_NEW_TOKENS_CAP } from './manifest.js';
import { externalTensor } from './onnx_wire.js';
import { offsetSeed, resolveOptions } from './options.js';
import { sample } from './sampler.js';
import { Sequence } from './sequence.js';
import { CharTokenizer, UNKNOWN_POLICIES } from './tokenizers/char.js';
import { SentencePieceTokenizer } from './tokenizers/sentencepiece.js';

const MANIFEST_FILE = 'manifest.json';

/**
 * How a platform reads an export: its onnxruntime module, a reader of a file of the folder by name,
 * and sha256 as lowercase hex.
 * @typedef {{ort: any, read: (name: string) => Promise<Uint8Array>, sha256: (bytes: Uint8Array) => Promise<string>,
 *   entropy: (words: Uint32Array) => Uint32Array, where: string, sessionOptions?: object}} Platform
 */

export class Generator {
  /**
   * Use Generator.load (node.js, browser.js); this takes parts already checked.
   * @param {object} manifest the checked manifest (checkManifest)
   * @param {any} session an onnxruntime InferenceSession of model.onnx
   * @param {CharTokenizer|SentencePieceTokenizer} tokenizer
   * @param {any} ort the onnxruntime module (its Tensor)
   * @param {number} maxNewTokensCap the most tokens any request may ask for
   * @param {(words: Uint32Array) => Uint32Array} entropy random bits for requests without a seed
   */
  constructor(manifest, session, tokenizer, ort, maxNewTokensCap, entropy) {
    this.manifest = manifest;
    this.entropy = entropy;
    this.session = session;
    this.tokenizer = tokenizer;
    this.ort = ort;
    this.maxNewTokensCap = maxNewTokensCap;
    const g = manifest.generation;
    this.defaults = { temperature: g.temperature, topK: g.topK, topP: g.topP,
      maxNewTokens: Math.min(g.maxNewTokens, maxNewTokensCap) };
    /** each state tensor's layout: the batch axis splits its shape into outer x batch x inner */
    this.layouts = manifest.state.map((s) => {
      const axis = s.shape.indexOf('batch_size');
      const product = (dims) => dims.reduce((a, b) => a * b, 1);
      return { ...s, outer: product(s.shape.slice(0, axis)), inner: product(s.shape.slice(axis + 1)) };
    });
  }

  /**
   * Check folder/manifest.json, then read and check each file it names (size and sha256), parse
   * the tokenizer and open one onnxruntime session. A bad folder throws one Error here, never later.
   * Called on a subclass (node.js, browser.js), it makes an instance of that subclass.
   * @param {Platform} platform
   * @param {{maxNewTokensCap?: number}} [options]
   * @returns {Promise<Generator>}
   */
  static async open(platform, { maxNewTokensCap = MAX_NEW_TOKENS_CAP } = {}) {
    if (!Number.isSafeInteger(maxNewTokensCap) || maxNewTokensCap < 1) {
      throw new Error(`maxNewTokensCap must be an integer >= 1, got ${maxNewTokensCap}`);
    }
    const { where } = platform;
    const manifestBytes = await platform.read(MANIFEST_FILE).catch((e) => {
      throw new Error(`${where} is not an rnnlm export: it has no readable ${MANIFEST_FILE} (${e.message}); `
        + 'make one with `rnnlm export CKPT --out DIR` (or `make export`)');
    });
    if (manifestBytes.length > MAX_MANIFEST_BYTES) {
      throw new Error(`${MANIFEST_FILE} in ${where} is larger than ${MAX_MANIFEST_BYTES} bytes; ${EXPORT_ADVICE}`);
    }
    let raw;
    try {
      raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(manifestBytes));
    } catch (e) {
      throw new Error(`${MANIFEST_FILE} in ${where} is not valid JSON (${e.message}); ${EXPORT_ADVICE}`);
    }
    const manifest = { ...checkManifest(raw, `${MANIFEST_FILE} in ${where}`), where };
    const entry = manifest.data;
    const readChecked = async (file, sha256, maxBytes) => {
      const name = `${file} in ${where}`;
      const bytes = await platform.read(file).catch((e) => {
        throw new Error(`${MANIFEST_FILE} in ${where} names ${file}, which cannot be read (${e.message}); ${EXPORT_ADVICE}`);
      });
      if (bytes.length > maxBytes) {
        throw new Error(`${name} has ${bytes.length} bytes, more than the ${maxBytes} its manifest allows; ${EXPORT_ADVICE}`);
      }
      if (await platform.sha256(bytes) !== sha256) {
        throw new Error(`${name} does not match the sha256 in its manifest (edited, truncated or replaced); ${EXPORT_ADVICE}`);
      }
      return bytes;
    };
    const model = await readChecked(entry.model.file, entry.model.sha256, entry.model.bytes);
    let outside;
    try {
      outside = externalTensor(model);
    } catch (e) {
      throw new Error(`${entry.model.file} in ${where} is not an ONNX graph (${e.message}); ${EXPORT_ADVICE}`);
    }
    if (outside !== null) {
      throw new Error(`${entry.model.file} in ${where} stores tensor ${JSON.stringify(outside.slice(0, 60))} as external `
        + `data, which could read a file outside its folder; rnnlm graphs hold every tensor: ${EXPORT_ADVICE}`);
    }
    const tokenizer = await loadTokenizer(manifest, readChecked, where);
    let session;
    try {
      session = await platform.ort.InferenceSession.create(model, platform.sessionOptions ?? {});
    } catch (e) {
      throw new Error(`onnxruntime cannot load ${entry.model.file} in ${where} (${e.message}); ${EXPORT_ADVICE}`);
    }
    checkGraph(session, manifest);
    const generator = new this(manifest, session, tokenizer, platform.ort, maxNewTokensCap, platform.entropy);
    await generator.checkFirstStep();
    return generator;
  }

  /** One step at batch sizes 1 and 2 from a zero state must run and yield finite logits. */
  async checkFirstStep() {
    const { where } = this.manifest;
    for (const B of [1, 2]) {
      let logits;
      try {
        const out = await this.session.run(this.feeds(new Array(B).fill(0), this.layouts.map((s) => new Float32Array(s.outer * B * s.inner))));
        logits = out[this.manifest.logits].data;
      } catch (e) {
        throw new Error(`the graph in ${where} fails its first step (${String(e.message).split('\n')[0].slice(0, 200)}); ${EXPORT_ADVICE}`);
      }
      if (!allFinite(logits)) throw new Error(`the graph in ${where} yields non-finite logits at its first step; ${EXPORT_ADVICE}`);
    }
  }

  /**
   * The step function's inputs for a batch: token ids and, per state tensor, its (outer, B, inner) data.
   * @param {number[]} ids @param {Float32Array[]} states
   */
  feeds(ids, states) {
    const { ort, manifest } = this;
    const B = ids.length;
    const feeds = { [manifest.inputIds]: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [B]) };
    this.layouts.forEach((s, k) => {
      feeds[s.input] = new ort.Tensor('float32', states[k], s.shape.map((d) => (d === 'batch_size' ? B : d)));
    });
    return feeds;
  }

  // ------------------------------------------------------------------------- the engine

  /**
   * A new sequence for prompt (the start token for an empty one) with a zero state.
   * @param {string} prompt
   * @param {import('./index.js').Options} [options] undefined fields take the manifest's defaults
   * @returns {Sequence}
   */
  start(prompt, options = {}) {
    if (typeof prompt !== 'string') throw new Error(`a prompt must be a string, got ${typeof prompt}`);
    const { unknown = 'error' } = options ?? {};
    if (!UNKNOWN_POLICIES.includes(unknown)) {
      throw new Error(`unknown must be one of ${UNKNOWN_POLICIES.join(', ')}, got ${JSON.stringify(unknown)}`);
    }
    const resolved = resolveOptions(options ?? {}, this.defaults, this.maxNewTokensCap, this.entropy);
    const ids = this.tokenizer.encode(prompt, unknown);
    const state = this.layouts.map((s) => new Float32Array(s.outer * s.inner));
    return new Sequence(ids.length ? ids : [this.manifest.generation.startToken], resolved, this.tokenizer, state);
  }

  /**
   * Advance every unfinished sequence by one token in one batched call of the step function.
   * Afterwards each sequence's `state` holds its new state rows and `logits` the distribution of
   * its next token. Resolves to the text each released at this step ('' during prefill and when finished).
   * @param {Sequence[]} sequences
   * @returns {Promise<string[]>}
   */
  async step(sequences) {
    const pieces = sequences.map(() => '');
    const rows = sequences.flatMap((s, i) => (s.finished ? [] : [i])); // where each row's sequence is
    const live = rows.map((i) => sequences[i]);
    const B = live.length;
    if (B === 0) return pieces;
    const { manifest } = this;
    const states = this.layouts.map((s, k) => {
      const data = new Float32Array(s.outer * B * s.inner);
      live.forEach((seq, j) => {
        for (let o = 0; o < s.outer; o++) data.set(seq.state[k].subarray(o * s.inner, (o + 1) * s.inner), (o * B + j) * s.inner);
      });
      return data;
    });
    const out = await this.session.run(this.feeds(live.map((s) => s.inputId), states));
    const V = manifest.vocabSize;
    const logits = /** @type {Float32Array} */ (out[manifest.logits].data);
    for (const [k, s] of this.layouts.entries()) {
      const data = /** @type {Float32Array} */ (out[s.output].data);
      live.forEach((seq, j) => {
        for (let o = 0; o < s.outer; o++) seq.state[k].set(data.subarray((o * B + j) * s.inner, (o * B + j + 1) * s.inner), o * s.inner);
      });
    }
    live.forEach((seq, j) => {
      seq.logits = logits.slice(j * V, (j + 1) * V);
      if (seq.prefilling) seq.promptFed += 1;
      if (seq.prefilling) return;
      if (!allFinite(seq.logits)) {
        seq.fail(`the model in ${manifest.where} yielded logits that are not all finite (NaN or `
          + 'infinite) at this step: there is nothing to sample from; check the model (re-train or re-export it)');
        return;
      }
      const token = sample(seq.logits, seq.options, seq.key, seq.tokenIds.length);
      pieces[rows[j]] = seq.accept(token);
    });
    return pieces;
  }

  // ------------------------------------------------------------------------- text in, text out

  /**
   * The new text after prompt, piece by piece as it is sampled (the prompt is not repeated).
   * Bad options throw here, before any step.
   * @param {string} prompt
   * @param {import('./index.js').Options} [options]
   * @returns {AsyncGenerator<string>}
   */
  stream(prompt, options = {}) {
    return this.pieces(this.start(prompt, options));
  }

  /** @param {Sequence} sequence */
  async* pieces(sequence) {
    while (!sequence.finished) {
      const [piece] = await this.step([sequence]);
      if (piece) yield piece;
    }
    if (sequence.error) throw new Error(sequence.error);
  }

  /**
   * The new text after prompt: what stream's pieces join to.
   * @param {string} prompt
   * @param {import('./index.js').Options} [options]
   * @returns {Promise<string>}
   */
  async generate(prompt, options = {}) {
    const [text] = await this.run([this.start(prompt, options)]);
    return text;
  }

  /**
   * The new text after each prompt, all sampled together. seed: one per prompt, or one s giving
   * prompt i the seed (s + i) mod 2^64, so text i equals generate(prompts[i], {seed: s + i}).
   * @param {string[]} prompts
   * @param {Omit<import('./index.js').Options, 'seed'> & {seed?: number|bigint|(number|bigint)[]}} [options]
   * @returns {Promise<string[]>}
   */
  async generateBatch(prompts, options = {}) {
    if (!Array.isArray(prompts)) throw new Error('generateBatch takes an array of prompts; use generate for a single prompt');
    const { seed, ...rest } = options ?? {};
    let sequences;
    if (Array.isArray(seed)) {
      if (seed.length !== prompts.length) {
        throw new Error(`generateBatch got ${seed.length} seeds for ${prompts.length} prompts: give one per prompt, or one`);
      }
      sequences = prompts.map((p, i) => this.start(p, { ...rest, seed: seed[i] }));
    } else {
      const base = resolveOptions({ ...rest, seed, unknown: undefined }, this.defaults, this.maxNewTokensCap,
        this.entropy).seed;
      sequences = prompts.map((p, i) => this.start(p, { ...rest, seed: offsetSeed(base, i) }));
    }
    return this.run(sequences);
  }

  /** Step sequences until all finish; throw the first one's error. @param {Sequence[]} sequences */
  async run(sequences) {
    while (sequences.some((s) => !s.finished)) await this.step(sequences);
    const failed = sequences.find((s) => s.error);
    if (failed) throw new Error(failed.error);
    return sequences.map((s) => s.text);
  }
}

/**
 * The graph's inputs and outputs are exactly those the manifest names, with its dtypes and shapes
 * (where onnxruntime reports them: a named or unknown axis reads as batch_size).
 */
function checkGraph(session, manifest) {
  const { where } = manifest;
  const want = {
    inputs: { [manifest.inputIds]: ['int64', ['batch_size']],
      ...Object.fromEntries(manifest.state.map((s) => [s.input, [s.dtype, s.shape]])) },
    outputs: { [manifest.logits]: ['float32', ['batch_size', manifest.vocabSize]],
      ...Object.fromEntries(manifest.state.map((s) => [s.output, [s.dtype, s.shape]])) },
  };
  for (const [kind, names, metadata] of [['inputs', session.inputNames, session.inputMetadata],
    ['outputs', session.outputNames, session.outputMetadata]]) {
    const have = [...names].sort();
    if (JSON.stringify(have) !== JSON.stringify(Object.keys(want[kind]).sort())) {
      throw new Error(`the graph in ${where} has ${kind} ${have.join(', ')}, but its manifest names `
        + `${Object.keys(want[kind]).sort().join(', ')}; ${EXPORT_ADVICE}`);
    }
    for (const m of metadata ?? []) {
      const [dtype, shape] = want[kind][m.name];
      const graph = (m.shape ?? []).map((d) => (typeof d === 'number' ? d : 'batch_size'));
      if (m.type !== dtype || JSON.stringify(graph) !== JSON.stringify(shape)) {
        throw new Error(`the graph in ${where} has ${m.name} of type ${m.type} and shape [${graph.join(', ')}], but its `
          + `manifest says ${dtype} [${shape.join(', ')}] (vocab_size ${manifest.vocabSize}, num_layers `
          + `${manifest.numLayers}, hidden_size ${manifest.hiddenSize}); ${EXPORT_ADVICE}`);
      }
    }
  }
}

/** @param {ArrayLike<number>} row */
function allFinite(row) {
  for (let i = 0; i < row.length; i++) if (!Number.isFinite(row[i])) return false;
  return true;
}

/**
 * The export's tokenizer: tokenizer.json for char, the vocabulary file beside tokenizer.model for
 * sentencepiece; its size must equal the model's vocab_size.
 */
async function loadTokenizer(manifest, readChecked, where) {
  const t = manifest.data.tokenizer;
  let tokenizer;
  let file = t.file;
  try {
    if (manifest.tokenizerType === 'char') {
      tokenizer = CharTokenizer.fromBytes(await readChecked(t.file, t.sha256, 1 << 26));
    } else {
      if (!t.vocabulary) {
        throw new Error(`this ${manifest.tokenizerType} export has no vocabulary file for JavaScript (tokenizer.vocabulary in `
          + 'its manifest): re-export it with this rnnlm, `rnnlm export CKPT --out DIR`');
      }
      file = t.vocabulary.file;
      tokenizer = SentencePieceTokenizer.fromBytes(await readChecked(file, t.vocabulary.sha256, 1 << 26));
      if (tokenizer.kind !== manifest.tokenizerType) {
        throw new Error(`it holds a ${tokenizer.kind} model, but tokenizer.type says '${manifest.tokenizerType}'; ${EXPORT_ADVICE}`);
      }
    }
  } catch (e) {
    throw new Error(e.message.includes(where) ? e.message : `${file} in ${where}: ${e.message}`);
  }
  if (tokenizer.vocabSize !== manifest.vocabSize) {
    throw new Error(`${file} in ${where} has ${tokenizer.vocabSize} tokens but the model ${manifest.vocabSize}; ${EXPORT_ADVICE}`);
  }
  return tokenizer;
}
