import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Generator } from '../src/node.js';
import { exportOf, expected, options, SKIP } from './fixture.js';

describe('the same text as Python', { skip: SKIP }, () => {
  const generators = {};
  before(async () => {
    for (const name of ['char', 'bpe']) generators[name] = await Generator.load(exportOf(name), { threads: 1 });
  });

  test(`generate: ${expected?.generate.length} cases (greedy, temperature, top-k, top-p, stop, seeds >= 2^32, non-ASCII)`, async () => {
    for (const c of expected.generate) {
      const text = await generators[c.model].generate(c.prompt, options(c.options));
      assert.equal(text, c.text, `${c.model} ${JSON.stringify(c.prompt)} ${JSON.stringify(c.options)}`);
    }
  });

  test('generateBatch: each text equals Python\'s, and generate\'s with seed s + i', async () => {
    for (const c of expected.generate_batch) {
      const o = options(c.options);
      assert.deepEqual(await generators[c.model].generateBatch(c.prompts, o), c.texts);
      for (const [i, prompt] of c.prompts.entries()) {
        const seed = Array.isArray(o.seed) ? o.seed[i] : o.seed + BigInt(i);
        assert.equal(await generators[c.model].generate(prompt, { ...o, seed }), c.texts[i]);
      }
    }
  });

  test('stream: the pieces join to generate\'s text, and none holds a stop string', async () => {
    for (const c of expected.generate.filter((x) => x.options.stop || x.model === 'bpe')) {
      const pieces = [];
      for await (const piece of generators[c.model].stream(c.prompt, options(c.options))) pieces.push(piece);
      assert.equal(pieces.join(''), c.text);
      assert.ok(pieces.every((p) => p.length > 0));
    }
  });

  test('start/step: the state is exposed, one array per state tensor of the manifest', async () => {
    const g = generators.char;
    const sequence = g.start('ROMEO:', { seed: 1n, maxNewTokens: 5 });
    const { state, hidden_size: H, num_layers: L } = g.manifest.data;
    assert.equal(sequence.state.length, state.length);
    assert.equal(sequence.state[0].length, L * H);
    assert.ok(sequence.state[0].every((x) => x === 0));
    await g.step([sequence]);
    assert.ok(sequence.state[0].some((x) => x !== 0) && sequence.state[0].every((x) => Math.abs(x) <= 1)); // tanh
    assert.equal(sequence.logits.length, g.manifest.vocabSize);
    while (!sequence.finished) await g.step([sequence]);
    assert.equal(sequence.finishReason, 'length');
    assert.equal(sequence.text, await g.generate('ROMEO:', { seed: 1n, maxNewTokens: 5 }));
  });

  test('a request without a seed gets one, and it draws the same text again', async () => {
    const sequence = generators.char.start('KING', { maxNewTokens: 20, temperature: 1 });
    assert.equal(typeof sequence.seed, 'bigint');
    const [text] = await generators.char.run([sequence]);
    assert.equal(await generators.char.generate('KING', { maxNewTokens: 20, temperature: 1, seed: sequence.seed }), text);
  });

  test('logits that are not all finite end that sequence with an error naming the model; the batch goes on', async () => {
    const g = generators.char;
    const { Tensor } = await import('onnxruntime-node');
    const V = g.manifest.vocabSize;
    const [state] = g.manifest.state;
    const session = { // row 1's logits turn NaN at its third step
      calls: 0,
      async run(feeds) {
        this.calls += 1;
        const B = feeds[g.manifest.inputIds].dims[0];
        const logits = new Float32Array(B * V).map((_, k) => (k % V) / V);
        if (B > 1 && this.calls >= 3) logits[V + 5] = NaN;
        return { [g.manifest.logits]: new Tensor('float32', logits, [B, V]), [state.output]: feeds[state.input] };
      },
    };
    const faulty = new g.constructor(g.manifest, session, g.tokenizer, g.ort, 100, g.entropy);
    const sequences = ['a', 'b'].map((p) => faulty.start(p, { maxNewTokens: 5, temperature: 0 }));
    await assert.rejects(faulty.run(sequences), /the model in .*char yielded logits that are not all finite/);
    assert.equal(sequences[0].finishReason, 'length');
    assert.equal(sequences[0].tokenIds.length, 5);
    assert.equal(sequences[1].finishReason, 'error');
    assert.ok(sequences[1].tokenIds.every((id) => id >= 0 && id < V));
  });

  test('bad options throw before any step, naming the option and its range', () => {
    const g = generators.char;
    const cases = [
      [{ temperature: -1 }, /temperature must be a number >= 0/],
      [{ topK: 1.5 }, /top_k must be an integer >= 0/],
      [{ topP: 0 }, /top_p must lie in \(0, 1\]/],
      [{ maxNewTokens: 0 }, /max_new_tokens must be an integer from 1 to 10000/],
      [{ stop: [''] }, /stop must be a list of non-empty strings/],
      [{ seed: -1 }, /seed must be an integer from 0 to 2\*\*64 - 1/],
      [{ seed: 2n ** 64n }, /seed must be an integer/],
      [{ seed: 0.5 }, /seed must be an integer/],
      [{ unknown: 'ignore' }, /unknown must be one of error, drop, replace/],
      [{ topk: 3 }, /unknown option\(s\) topk/],
    ];
    for (const [o, message] of cases) assert.throws(() => g.stream('ROMEO', o), message, JSON.stringify(o, (k, v) => (typeof v === 'bigint' ? `${v}n` : v)));
    assert.throws(() => g.start('café'), /absent from the vocabulary: "é"/);
    assert.rejects(() => g.generateBatch('ROMEO'), /takes an array of prompts/);
  });
});

describe('a bad folder is refused at load, with what to do', { skip: SKIP }, () => {
  let dir;
  before(() => { dir = mkdtempSync(join(tmpdir(), 'rnnlm-js-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const copy = (name) => { const to = join(dir, name); cpSync(exportOf('bpe'), to, { recursive: true }); return to; };
  const edit = (folder, change) => {
    const path = join(folder, 'manifest.json');
    const data = JSON.parse(readFileSync(path, 'utf8'));
    change(data);
    writeFileSync(path, JSON.stringify(data));
  };

  test('no folder, no manifest', async () => {
    await assert.rejects(Generator.load(join(dir, 'absent')), /is not an rnnlm export: it has no readable manifest.json.*rnnlm export/);
  });
  test('an edited file', async () => {
    const folder = copy('edited');
    writeFileSync(join(folder, 'vocab.json'), `${readFileSync(join(folder, 'vocab.json'), 'utf8')} `);
    await assert.rejects(Generator.load(folder), /vocab.json in .* does not match the sha256 in its manifest.*re-export/);
  });
  test('a file that links out of the folder', async () => {
    const folder = copy('linked');
    rmSync(join(folder, 'vocab.json'));
    symlinkSync(join(exportOf('bpe'), 'vocab.json'), join(folder, 'vocab.json'));
    await assert.rejects(Generator.load(folder), /names vocab.json, which cannot be read \(it is a link to .*, outside the folder\)/);
  });
  test('a graph that keeps a tensor in a file outside the folder (external data)', async () => {
    await assert.rejects(Generator.load(exportOf('external')),
      /model.onnx in .* stores tensor ".*" as external data, which could read a file outside its folder/);
  });
  test('an unknown format, sampler or field', async () => {
    const cases = [
      [(m) => { m.format = 'rnnlm-step/9'; }, /has format "rnnlm-step\/9", but this runtime reads 'rnnlm-step\/1' or 'rnnlm-step\/2'/],
      [(m) => { m.sampler = 'other/1'; }, /names sampler "other\/1", but this runtime samples by 'gumbel-lowbias32\/1'/],
      [(m) => { m.state[0].shape = [1, 'batch_size', 32]; }, /state\[0\].shape must be \[num_layers, batch_size, hidden_size\]/],
      [(m) => { m.model.file = '../model.onnx'; }, /model.file must be a plain file name/],
      [(m) => { delete m.tokenizer.vocabulary; }, /no vocabulary file for JavaScript/],
      [(m) => { m.generation.top_p = 2; }, /generation.top_p must lie in \(0, 1\]/],
      [(m) => { m.hidden_size = 33; m.state[0].shape = [2, 'batch_size', 33]; },
        /the graph in .* has past_hidden of type float32 and shape \[2, batch_size, 32\], but its manifest says float32 \[2, batch_size, 33\]/],
      [(m) => { m.state[0].output = 'next_hidden'; }, /the graph in .* has outputs logits, present_hidden, but its manifest names logits, next_hidden/],
      [(m) => { m.training = JSON.parse(`${'['.repeat(20)}${']'.repeat(20)}`); }, /nested too deeply \(more than 16 levels\)/],
      [(m) => { m.state[0].shape = [2, 'batch_size', true]; }, /state\[0\].shape must be/],
    ];
    for (const [k, [change, message]] of cases.entries()) {
      const folder = copy(`field${k}`);
      edit(folder, change);
      await assert.rejects(Generator.load(folder), message);
    }
  });
  test('an rnnlm-step/1 folder loads, its state taken from inputs and outputs', async () => {
    const folder = copy('format1');
    edit(folder, (m) => {
      const [s] = m.state;
      m.format = 'rnnlm-step/1';
      delete m.sampler;
      delete m.state;
      m.inputs.past_hidden = { name: s.input, dtype: s.dtype, shape: s.shape };
      m.outputs.present_hidden = { name: s.output, dtype: s.dtype, shape: s.shape };
    });
    const g = await Generator.load(folder);
    const c = expected.generate.find((x) => x.model === 'bpe');
    assert.equal(await g.generate(c.prompt, options(c.options)), c.text);
  });
});
