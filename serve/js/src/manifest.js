/**
 * manifest.json: read and checked before anything else of an export is loaded, field by field as
 * the Python runtime checks it (src/rnnlm/runtime/manifest.py's SCHEMA, docs/manifest.md).
 * Format rnnlm-step/2 lists the recurrent state tensors and names the sampling rule; an
 * rnnlm-step/1 manifest is read as /2 with the rule gumbel-lowbias32/1 and one state tensor,
 * its inputs.past_hidden -> outputs.present_hidden.
 * @module
 */

import { RULE } from './sampler.js';
import { checkOptions } from './options.js';

export const FORMAT = 'rnnlm-step/2';
export const FORMATS = ['rnnlm-step/1', FORMAT];
export const BATCH = 'batch_size';
export const EXPORT_ADVICE = 're-export it with `rnnlm export CKPT --out DIR`';
const CELLS = ['rnn_tanh', 'rnn_relu', 'gru', 'lstm'];
const TOKENIZERS = ['char', 'bpe', 'unigram'];
export const MAX_NEW_TOKENS_CAP = 10000; // the most tokens a default (and, unless a Generator lowers it, a request) may ask
export const MAX_MANIFEST_BYTES = 1 << 20;
const MAX_JSON_DEPTH = 16; // objects and lists inside each other; an export's manifest has 5 levels

const isInt = (v) => Number.isInteger(v);
const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
const oneOf = (...values) => [(v) => values.includes(v), `one of ${values.map((x) => `'${x}'`).join(', ')}`];
const between = (low, high) => [(v) => v >= low && v <= high, `in [${low}, ${high}]`];
const matches = (re, says) => [(v) => re.test(v), says];
const shape = (...dims) => [(v, m) => JSON.stringify(v) === JSON.stringify(dims.map((d) => (d === BATCH ? d : m[d]))),
  `[${dims.join(', ')}]`];
const FILE_NAME = [(v) => v.length > 0 && new TextEncoder().encode(v).length <= 255 && v !== '.' && v !== '..'
  && !/[/\\\x00-\x1f\x7f]/.test(v), "a plain file name inside the folder (no '/', '..' or NUL; at most 255 bytes)",
  false]; // an error does not show the value: it may be a path outside the folder
const GRAPH_NAME = matches(/^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$/, 'a graph I/O name (letters, digits, _ . : -)');
const SHA256 = matches(/^[0-9a-f]{64}$/, '64 lowercase hex digits');
const TYPES = { str: (v) => typeof v === 'string', int: isInt, float: isNumber, list: Array.isArray,
  dict: (v) => v !== null && typeof v === 'object' && !Array.isArray(v) };
const KIND = { str: 'a string', int: 'an integer', float: 'a number', list: 'a list', dict: 'an object' };

/**
 * [path, type, rule, optional]: the Python SCHEMA, row for row (tests compare them); a rule is
 * [holds(value, manifest), what it says, whether an error shows the value]. "state[]." reaches
 * every entry. The generation defaults are checked as a request's options are (checkOptions).
 */
export const SCHEMA = [
  ['format', 'str', oneOf(...FORMATS)],
  ['sampler', 'str', oneOf(RULE)],
  ['model.file', 'str', FILE_NAME],
  ['model.sha256', 'str', SHA256],
  ['model.bytes', 'int', between(1, 2 ** 40)],
  ['model.opset', 'int', between(7, 1000)],
  ['model.quantization', 'str', oneOf('none', 'int8')],
  ['model.parity', 'dict', null, true],
  ['cell', 'str', oneOf(...CELLS)],
  ['vocab_size', 'int', between(1, 2 ** 24)],
  ['hidden_size', 'int', between(1, 2 ** 16)],
  ['num_layers', 'int', between(1, 256)],
  ['inputs.input_ids.name', 'str', GRAPH_NAME],
  ['inputs.input_ids.dtype', 'str', oneOf('int64')],
  ['inputs.input_ids.shape', 'list', shape(BATCH)],
  ['outputs.logits.name', 'str', GRAPH_NAME],
  ['outputs.logits.dtype', 'str', oneOf('float32')],
  ['outputs.logits.shape', 'list', shape(BATCH, 'vocab_size')],
  ['state', 'list', [(v, m) => v.length === (m.cell === 'lstm' ? 2 : 1),
    'one entry per state tensor of the cell: 2 for lstm (hidden, cell), else 1']],
  ['state[].input', 'str', GRAPH_NAME],
  ['state[].output', 'str', GRAPH_NAME],
  ['state[].dtype', 'str', oneOf('float32')],
  ['state[].shape', 'list', shape('num_layers', BATCH, 'hidden_size')],
  ['tokenizer.type', 'str', oneOf(...TOKENIZERS)],
  ['tokenizer.file', 'str', FILE_NAME],
  ['tokenizer.sha256', 'str', SHA256],
  ['tokenizer.vocabulary.file', 'str', FILE_NAME, true],
  ['tokenizer.vocabulary.sha256', 'str', SHA256, true],
  ['generation.temperature', 'float'],
  ['generation.top_k', 'int'],
  ['generation.top_p', 'float'],
  ['generation.max_new_tokens', 'int'],
  ['generation.start_token', 'int', [(v, m) => v >= 0 && v < m.vocab_size, 'in [0, vocab_size)']],
  ['training', 'dict', null, true],
];

/** (name, value) of every place a schema path reaches; a missing value is undefined. */
function values(data, path) {
  const [head, rest] = path.split('[].');
  let value = data;
  for (const key of head.split('.')) value = TYPES.dict(value) ? value[key] : undefined;
  if (rest === undefined) return [[head, value]];
  return value.map((entry, i) => [`${head}[${i}].${rest}`, TYPES.dict(entry) ? entry[rest] : undefined]);
}

const show = (v) => {
  const text = Array.isArray(v) ? 'a JSON list' : TYPES.dict(v) ? 'a JSON object' : JSON.stringify(v) ?? String(v);
  return text.length <= 60 ? text : `${text.slice(0, 57)}...`;
};

/**
 * An rnnlm-step/1 manifest in /2's shape.
 * @param {object} data
 */
function asFormat2(data) {
  const inputs = TYPES.dict(data.inputs) ? data.inputs : {};
  const outputs = TYPES.dict(data.outputs) ? data.outputs : {};
  const past = TYPES.dict(inputs.past_hidden) ? inputs.past_hidden : {};
  const present = TYPES.dict(outputs.present_hidden) ? outputs.present_hidden : {};
  const { past_hidden: _p, ...otherInputs } = inputs;
  const { present_hidden: _q, ...otherOutputs } = outputs;
  return { ...data, sampler: RULE, inputs: otherInputs, outputs: otherOutputs,
    state: [{ input: past.name, output: present.name, dtype: past.dtype, shape: past.shape }] };
}

/**
 * Check a parsed manifest.json; throw an Error naming the first bad field.
 * @param {any} raw the parsed JSON
 * @param {string} where how errors name the manifest
 * @returns {Omit<import('./index.js').Manifest, 'where'>}
 */
export function checkManifest(raw, where) {
  let level = [raw];
  for (let depth = 0; depth < MAX_JSON_DEPTH; depth++) { // breadth first: no recursion
    level = level.flatMap((v) => (v !== null && typeof v === 'object' ? Object.values(v) : []));
  }
  if (level.length > 0) {
    throw new Error(`${where} is nested too deeply (more than ${MAX_JSON_DEPTH} levels); ${EXPORT_ADVICE}`);
  }
  const found = TYPES.dict(raw) ? raw.format : undefined;
  if (!FORMATS.includes(found)) {
    throw new Error(`${where} has format ${show(found)}, but this runtime reads ${FORMATS.map((f) => `'${f}'`).join(' or ')}; `
      + 'use the rnnlm version that wrote it, or re-export the model with this one');
  }
  const data = found === 'rnnlm-step/1' ? asFormat2(raw) : raw;
  if (typeof data.sampler === 'string' && data.sampler !== RULE) {
    throw new Error(`${where} names sampler ${show(data.sampler)}, but this runtime samples by '${RULE}'; `
      + 'use the rnnlm version that wrote it');
  }
  for (const [path, type, rule, optional] of SCHEMA) {
    for (const [name, value] of values(data, path)) {
      if (value === undefined && optional) continue;
      if (!TYPES[type](value)) {
        throw new Error(`${where} lacks a valid ${name} (${KIND[type]}), it has `
          + `${value === undefined ? 'nothing' : show(value)}; ${EXPORT_ADVICE}`);
      }
      if (rule && !rule[0](value, data)) {
        throw new Error(`${where}: ${name} must be ${rule[1]}${rule[2] === false ? '' : `, got ${show(value)}`}; ${EXPORT_ADVICE}`);
      }
    }
  }
  const g = data.generation;
  try {
    checkOptions({ temperature: g.temperature, topK: g.top_k, topP: g.top_p, maxNewTokens: g.max_new_tokens }, MAX_NEW_TOKENS_CAP);
  } catch (e) {
    throw new Error(`${where}: generation.${e.message}; ${EXPORT_ADVICE}`);
  }
  const io = [data.inputs.input_ids.name, data.outputs.logits.name, ...data.state.flatMap((s) => [s.input, s.output])];
  if (new Set(io).size < io.length) {
    throw new Error(`${where} names one graph input or output twice (${io.join(', ')}); ${EXPORT_ADVICE}`);
  }
  return {
    format: found, data, sampler: data.sampler, cell: data.cell, vocabSize: data.vocab_size,
    hiddenSize: data.hidden_size, numLayers: data.num_layers, tokenizerType: data.tokenizer.type,
    inputIds: data.inputs.input_ids.name, logits: data.outputs.logits.name,
    state: data.state.map((s) => ({ input: s.input, output: s.output, dtype: s.dtype, shape: s.shape })),
    generation: { temperature: g.temperature, topK: g.top_k, topP: g.top_p, maxNewTokens: g.max_new_tokens,
      startToken: g.start_token },
  };
}
