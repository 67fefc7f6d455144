// Types of the rnnlm package (serve/js): the same API under Node ('./node.js') and in browsers
// ('./browser.js'); the code is plain ES modules with JSDoc, this file describes what they export.

/** Options of one request; undefined fields take the manifest's defaults. */
export interface Options {
  /** tokens to sample, 1 .. maxNewTokensCap (10,000 unless load lowers it) */
  maxNewTokens?: number;
  /** >= 0; 0 is greedy (the argmax, no draw) */
  temperature?: number;
  /** keep the tokens whose logit is at least the k-th largest; 0 keeps all */
  topK?: number;
  /** then keep the shortest most-likely prefix whose probability reaches topP; 1 keeps all */
  topP?: number;
  /** the text ends before the first of these strings */
  stop?: string | string[];
  /** an integer in [0, 2^64): a safe integer or a BigInt; left out, one is drawn (sequence.seed) */
  seed?: number | bigint;
  /** prompt characters outside a char vocabulary: throw (default), drop them, or replace them by a space */
  unknown?: 'error' | 'drop' | 'replace';
}

export interface StateTensor {
  input: string;
  output: string;
  dtype: 'float32';
  /** e.g. [num_layers, "batch_size", hidden_size] */
  shape: (number | 'batch_size')[];
}

/** A checked manifest.json (format rnnlm-step/2, or /1 read as /2). */
export interface Manifest {
  format: 'rnnlm-step/1' | 'rnnlm-step/2';
  /** the manifest as read (a /1 one in /2's shape) */
  data: Record<string, any>;
  sampler: 'gumbel-lowbias32/1';
  cell: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  tokenizerType: 'char' | 'bpe' | 'unigram';
  inputIds: string;
  logits: string;
  state: StateTensor[];
  generation: { temperature: number; topK: number; topP: number; maxNewTokens: number; startToken: number };
  /** the folder (Node) or URL (browser) it was read from */
  where: string;
}

export interface Tokenizer {
  kind: 'char' | 'bpe' | 'unigram';
  readonly vocabSize: number;
  encode(text: string, unknown?: 'error' | 'drop' | 'replace'): number[];
  decode(ids: number[]): string;
}

export class Sequence {
  readonly options: Required<Omit<Options, 'unknown' | 'stop' | 'seed'>> & { stop: string[]; seed: bigint };
  /** the seed it is sampled with: the one asked for, or one drawn for it */
  readonly seed: bigint;
  readonly promptIds: number[];
  readonly tokenIds: number[];
  /** the text released so far */
  readonly text: string;
  readonly finishReason: null | 'stop' | 'length' | 'error';
  readonly error: string | null;
  readonly finished: boolean;
  readonly prefilling: boolean;
  /** the token the next step feeds */
  readonly inputId: number;
  /** the recurrent state after the last step: one array per manifest.state entry, its shape without the batch axis */
  readonly state: Float32Array[];
  /** the logits of the last step: the model's distribution of the next token */
  readonly logits: Float32Array | null;
}

export class Generator {
  readonly manifest: Manifest;
  readonly tokenizer: Tokenizer;
  readonly defaults: { temperature: number; topK: number; topP: number; maxNewTokens: number };
  /** Node: a folder path; browser: a URL. Checks the manifest and each file's sha256. */
  static load(folder: string | URL, options?: { threads?: number; maxNewTokensCap?: number }): Promise<Generator>;
  generate(prompt: string, options?: Options): Promise<string>;
  stream(prompt: string, options?: Options): AsyncGenerator<string>;
  /** seed: one per prompt, or one s giving prompt i the seed (s + i) mod 2^64 */
  generateBatch(prompts: string[], options?: Omit<Options, 'seed'> & { seed?: number | bigint | (number | bigint)[] }): Promise<string[]>;
  /** a new sequence with a zero state; throws on bad options or prompt */
  start(prompt: string, options?: Options): Sequence;
  /** one step-function call for every unfinished sequence; resolves to the text each released */
  step(sequences: Sequence[]): Promise<string[]>;
  /** step until all finish; resolves to their texts, rejects with the first one's error */
  run(sequences: Sequence[]): Promise<string[]>;
}

export const RULE: 'gumbel-lowbias32/1';
export const FORMAT: 'rnnlm-step/2';
export const FORMATS: string[];
export const UNKNOWN_POLICIES: string[];
export const VOCABULARY_FORMAT: 'sentencepiece-vocab/1';
export function checkManifest(raw: unknown, where: string): Omit<Manifest, 'where'>;
export function lowbias32(x: number): number;
export function seedKey(seed: number | bigint): number;
export function drawBits(key: number, n: number, i: number): number;
export function uniform(bits: number): number;
export function sample(logits: ArrayLike<number>, rule: { temperature: number; topK: number; topP: number }, key: number, n: number): number;
export function keptTokens(logits: ArrayLike<number>, m: number, temperature: number, topK: number, topP: number): Uint8Array;
export function decodeBytes(bytes: ArrayLike<number>): string;
export class CharTokenizer implements Tokenizer {
  constructor(chars: string);
  static fromBytes(bytes: Uint8Array): CharTokenizer;
  kind: 'char';
  readonly vocabSize: number;
  encode(text: string, unknown?: 'error' | 'drop' | 'replace'): number[];
  decode(ids: number[]): string;
}
export class SentencePieceTokenizer implements Tokenizer {
  constructor(spec: object);
  static fromBytes(bytes: Uint8Array): SentencePieceTokenizer;
  kind: 'bpe' | 'unigram';
  readonly vocabSize: number;
  encode(text: string): number[];
  decode(ids: number[]): string;
}
/** browser.js only: the onnxruntime-web module it runs on (its env sets WASM threads and paths) */
export const ort: any;
