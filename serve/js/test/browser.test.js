/**
 * The page in a real browser: `make web`'s server on a free loopback port with the fixture's
 * exports, driven in Debian's headless Chromium by playwright-core. The page's text for a fixed
 * seed must equal Python's; a screenshot is saved under RNNLM_ARTIFACTS (serve/js/test/artifacts).
 */

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ARTIFACTS, CHROMIUM, launch, serve } from './chromium.js';
import { exportOf, expected, SKIP } from './fixture.js';

const skip = SKIP || (!existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}: install it with \`apt-get install -y chromium\` (README.md)`);

/** The first position where two strings differ, for a readable failure. */
const firstDifference = (a, b) => {
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return `first difference at position ${i}: ${JSON.stringify(a.slice(i, i + 20))} vs ${JSON.stringify(b.slice(i, i + 20))}`;
};

async function generateOnPage(page, prompt, o) {
  await page.fill('#prompt', prompt);
  await page.fill('#maxNewTokens', String(o.maxNewTokens));
  await page.fill('#temperature', String(o.temperature));
  await page.fill('#topK', String(o.topK ?? 0));
  await page.fill('#topP', String(o.topP ?? 1));
  await page.fill('#seed', o.seed === undefined ? '' : String(o.seed));
  await page.fill('#stop', (o.stop?.[0] ?? '').replace(/\n/g, '\\n'));
  await page.selectOption('#unknown', o.unknown ?? 'error');
  await page.click('#generate');
  await page.waitForSelector('body[data-state="done"], body[data-state="error"]', { timeout: 60000 });
  return page.textContent('#output');
}

describe('the page in headless Chromium', { skip }, () => {
  const servers = {};
  let browser;
  before(async () => {
    for (const name of ['char', 'bpe']) servers[name] = await serve(exportOf(name));
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    for (const s of Object.values(servers)) s.stop();
  });

  for (const model of ['char', 'bpe']) {
    test(`${model}: the streamed text equals Python's for the same request`, async () => {
      const page = await browser.context.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(servers[model].url);
      await page.waitForSelector('body[data-state="ready"]', { timeout: 60000 });
      assert.match(await page.textContent('#model'), new RegExp(`2-layer tanh RNN, 32 units.*corpus tinyshakespeare-150k`));
      const cases = expected.generate.filter((c) => c.model === model && !(c.options.stop?.length > 1));
      for (const c of cases) {
        const text = await generateOnPage(page, c.prompt, c.options);
        assert.equal(await page.getAttribute('body', 'data-state'), 'done', await page.textContent('#error'));
        assert.ok(text === c.text, `${JSON.stringify(c.prompt)} ${JSON.stringify(c.options)}: ${firstDifference(text, c.text)}`);
      }
      const tokens = await page.$$('#tokens span');
      assert.ok(tokens.length > 0);
      await tokens[Math.min(8, tokens.length - 1)].hover();
      assert.match(await page.textContent('#tooltip'), /after .*%/);
      assert.equal((await page.$$('#tooltip tr')).length, 5);
      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: join(ARTIFACTS, `page-${model}.png`), fullPage: true });
      assert.deepEqual(errors, []);
      await page.close();
    });
  }

  test('bad input shows a message on the page', async () => {
    const page = await browser.context.newPage();
    await page.goto(servers.char.url);
    await page.waitForSelector('body[data-state="ready"]', { timeout: 60000 });
    for (const [field, value, message] of [['#seed', 'abc', /seed must be an integer/], ['#temperature', '-1', /temperature must be a number >= 0/],
      ['#prompt', 'café', /absent from the vocabulary: "é"/]]) {
      await page.reload();
      await page.waitForSelector('body[data-state="ready"]', { timeout: 60000 });
      await page.fill(field, value);
      await page.click('#generate');
      await page.waitForSelector('body[data-state="error"]');
      assert.match(await page.textContent('#error'), message);
      assert.equal(await page.isVisible('#error'), true);
    }
    await page.close();
  });

  test('without an export the page says which commands make one', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'rnnlm-empty-'));
    const server = await serve(join(empty, 'none'));
    const page = await browser.context.newPage();
    try {
      await page.goto(server.url);
      await page.waitForSelector('body[data-state="error"]', { timeout: 30000 });
      assert.match(await page.textContent('#error'), /No exported model at .*make train && make export/);
    } finally {
      await page.close();
      server.stop();
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
