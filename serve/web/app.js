/**
 * The page: load the export served at /model/, sample it in the browser (onnxruntime-web, WASM),
 * stream the text, and show what the recurrent state does: each token coloured by one unit's
 * activation after the model read it, and on hover the five tokens the model expected next.
 * Every problem (no export, a bad file, a bad option) is shown on the page.
 */

import { Generator } from '/js/browser.js';

const $ = (id) => document.getElementById(id);
const ADVICE = 'make one with `make train && make export` (or `make export CKPT=path/to/best.ckpt`), '
  + 'or serve another with `make web NAME=...`, then reload this page';

/** @type {Generator|null} */
let generator = null;
/** one record per token fed: its text, the state after it, the logits it produced */
let records = [];

function fail(message) {
  $('error').textContent = message;
  $('error').hidden = false;
  document.body.dataset.state = 'error';
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

/** A token's text for display: whitespace made visible where it would vanish. */
const visible = (text) => text.replace(/\n/g, '↵\n').replace(/\t/g, '→');
const label = (text) => (text === ' ' ? '␣' : text === '\n' ? '↵' : JSON.stringify(text).slice(1, -1));

/** A token's own text; a byte piece of a subword vocabulary (one byte of UTF-8) by its name, e.g. <0xE6>. */
const tokenText = (id) => (generator.tokenizer.byteOf?.[id] >= 0 ? generator.tokenizer.pieces[id] : generator.tokenizer.decode([id]));

async function init() {
  let info;
  try {
    info = await (await fetch('/export.json')).json();
  } catch (e) {
    fail(`The server did not answer (${e.message}): start it with \`make web\`.`);
    return;
  }
  if (!info.present) {
    $('model').textContent = 'No model.';
    fail(`No exported model at ${info.export}: ${ADVICE}.`);
    return;
  }
  try {
    generator = await Generator.load('/model/');
  } catch (e) {
    $('model').textContent = 'No model.';
    fail(`The model at ${info.export} cannot be used: ${e.message}`);
    return;
  }
  describe(generator.manifest, info.export);
  const d = generator.defaults;
  Object.assign($('temperature'), { value: d.temperature });
  Object.assign($('topK'), { value: d.topK });
  Object.assign($('topP'), { value: d.topP });
  fillUnitControls(generator.manifest);
  $('generate').disabled = false;
  document.body.dataset.state = 'ready';
}

function describe(m, folder) {
  const data = m.data;
  const training = data.training ?? {};
  const bpc = typeof training.val_bpc === 'number' ? training.val_bpc.toFixed(3) : 'not recorded';
  $('model').textContent = `${folder}: a ${m.numLayers}-layer ${data.cell.replace('rnn_', '')} RNN, `
    + `${m.hiddenSize} units, ${m.vocabSize} ${m.tokenizerType} tokens, ${(data.model.bytes / 1e6).toFixed(2)} MB `
    + `(${data.model.quantization === 'none' ? 'float32' : data.model.quantization}); val_bpc ${bpc}; `
    + `corpus ${training.corpus ?? 'not recorded'}; sampled by ${m.sampler} on onnxruntime-web (WASM)`;
}

function fillUnitControls(m) {
  $('tensor').replaceChildren(...m.state.map((s, k) => new Option(`${s.input} → ${s.output}`, k)));
  $('layer').replaceChildren(...Array.from({ length: m.numLayers }, (_, l) => new Option(String(l), l)));
  $('unitIndex').max = m.hiddenSize - 1;
}

/** The request of the form; a value that is not a number is passed as it is, for the runtime to name. */
function request() {
  const number = (id) => {
    const text = $(id).value.trim();
    return text === '' ? undefined : Number.isNaN(Number(text)) ? text : Number(text);
  };
  const seedText = $('seed').value.trim();
  const stop = $('stop').value.replace(/\\n/g, '\n').replace(/\\t/g, '\t');
  return {
    prompt: $('prompt').value,
    options: {
      maxNewTokens: number('maxNewTokens'), temperature: number('temperature'), topK: number('topK'),
      topP: number('topP'), stop: stop ? [stop] : undefined,
      seed: seedText === '' ? undefined : /^\d+$/.test(seedText) ? BigInt(seedText) : seedText,
      unknown: $('unknown').value,
    },
  };
}

async function generate(event) {
  event.preventDefault();
  clearError();
  const { prompt, options } = request();
  let sequence;
  try {
    sequence = generator.start(prompt, options);
  } catch (e) {
    fail(e.message);
    return;
  }
  document.body.dataset.state = 'running';
  $('generate').disabled = true;
  $('output').textContent = '';
  $('tokens').replaceChildren();
  records = [];
  const started = performance.now();
  try {
    while (!sequence.finished) {
      const fed = sequence.inputId;
      const prompted = sequence.prefilling;
      const [piece] = await generator.step([sequence]);
      records.push({ text: tokenText(fed), prompted, state: sequence.state.map((s) => s.slice()),
        logits: sequence.logits });
      $('tokens').append(tokenSpan(records.length - 1));
      if (piece) $('output').textContent += piece;
    }
    if (sequence.error) throw new Error(sequence.error);
  } catch (e) {
    fail(e.message);
    $('generate').disabled = false;
    return;
  }
  const seconds = (performance.now() - started) / 1000;
  const steps = records.length;
  $('status').textContent = `${sequence.tokenIds.length} tokens (${steps} steps with the prompt) in ${seconds.toFixed(2)} s: `
    + `${Math.round(steps / seconds)} steps/s; finished by ${sequence.finishReason}; seed ${sequence.seed}`;
  $('generate').disabled = false;
  document.body.dataset.state = 'done';
}

// ----------------------------------------------------------------------------- the unit's colours

function unitOf() {
  const k = Number($('tensor').value);
  const layer = Number($('layer').value);
  const unit = Number($('unitIndex').value);
  const H = generator.manifest.hiddenSize;
  return { k, index: layer * H + Math.min(Math.max(unit, 0), H - 1) };
}

/** The colour scale of the cell: -1..1 for tanh, 0..the largest seen for relu, else the range seen. */
function scale(k, index) {
  const cell = generator.manifest.cell;
  if (cell === 'rnn_tanh') return [-1, 1];
  const seen = records.map((r) => r.state[k][index]);
  const high = Math.max(1e-6, ...seen);
  return cell === 'rnn_relu' ? [0, high] : [Math.min(...seen), high];
}

/** Blue below the middle of the scale, red above, white at it. */
function colour(value, [low, high]) {
  const t = Math.max(-1, Math.min(1, (2 * (value - low)) / (high - low) - 1));
  return t >= 0 ? `rgba(220, 50, 47, ${t.toFixed(3)})` : `rgba(38, 139, 210, ${(-t).toFixed(3)})`;
}

function tokenSpan(i) {
  const span = document.createElement('span');
  span.textContent = visible(records[i].text);
  span.dataset.i = i;
  if (records[i].prompted) span.className = 'prompt';
  paint(span);
  return span;
}

function paint(span) {
  const { k, index } = unitOf();
  const value = records[Number(span.dataset.i)].state[k][index];
  span.style.background = colour(value, scale(k, index));
  span.dataset.activation = value.toFixed(4);
}

function repaint() {
  if (!generator) return;
  const { k, index } = unitOf();
  const [low, high] = scale(k, index);
  $('scale').innerHTML = `<span class="swatch" style="background: linear-gradient(to right, ${colour(low, [low, high])}, `
    + `white, ${colour(high, [low, high])})"></span> from ${low.toFixed(2)} to ${high.toFixed(2)}`;
  for (const span of $('tokens').children) paint(span);
}

// ----------------------------------------------------------------------------- the next tokens

/** The five most likely next tokens after record i, with their probabilities (softmax of the logits). */
function topFive(i) {
  const { logits } = records[i];
  let m = -Infinity;
  for (const x of logits) m = Math.max(m, x);
  const p = Array.from(logits, (x) => Math.exp(x - m));
  const total = p.reduce((a, b) => a + b, 0);
  return p.map((w, id) => [id, w / total]).sort((a, b) => b[1] - a[1]).slice(0, 5);
}

function showTooltip(event) {
  const span = event.target.closest('#tokens span');
  if (!span) return;
  const rows = topFive(Number(span.dataset.i)).map(([id, p]) => {
    const tr = document.createElement('tr');
    tr.append(Object.assign(document.createElement('td'), { textContent: label(tokenText(id)) }),
      Object.assign(document.createElement('td'), { textContent: `${(100 * p).toFixed(1)} %` }));
    return tr;
  });
  const table = document.createElement('table');
  table.append(...rows);
  const tip = $('tooltip');
  tip.replaceChildren(Object.assign(document.createElement('div'),
    { textContent: `after ${label(records[span.dataset.i].text)} (activation ${span.dataset.activation}), next:` }), table);
  const box = span.getBoundingClientRect();
  Object.assign(tip.style, { left: `${box.left + window.scrollX}px`, top: `${box.bottom + window.scrollY + 4}px` });
  tip.hidden = false;
}

// ----------------------------------------------------------------------------- speed

/**
 * Tokens per second of generate() at batch 1 on this page's onnxruntime-web, for `make bench`:
 * temperature 1 with a fixed seed, `tokens` new tokens after a one-token prompt; after a warm-up
 * (the WASM code's first calls are slow), the median of three runs.
 * @param {number} tokens
 */
async function measure(tokens) {
  const run = async () => {
    const started = performance.now();
    await generator.generate('\n', { maxNewTokens: tokens, temperature: 1, seed: 0 });
    return tokens / ((performance.now() - started) / 1000);
  };
  await run();
  const speeds = [await run(), await run(), await run()].sort((a, b) => a - b);
  return speeds[1];
}

window.rnnlm = { measure, generator: () => generator };
$('controls').addEventListener('submit', generate);
$('unit').addEventListener('input', repaint);
$('unit').addEventListener('submit', (e) => e.preventDefault());
$('tokens').addEventListener('mouseover', showTooltip);
$('tokens').addEventListener('mouseout', () => { $('tooltip').hidden = true; });
init().then(repaint, (e) => fail(e.message));
