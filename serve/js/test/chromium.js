/**
 * Helpers for driving the page of serve/web in Debian's headless Chromium (playwright-core): the
 * browser test and benchmarks/js.py use them.
 */

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SERVER = fileURLToPath(new URL('../../web/server.js', import.meta.url));
export const ARTIFACTS = process.env.RNNLM_ARTIFACTS ?? fileURLToPath(new URL('./artifacts/', import.meta.url));
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Start server.js for an export on a free loopback port; resolves to {url, stop()}. */
export function serve(folder) {
  const child = spawn(process.execPath, [SERVER, '--port', '0', '--export', folder], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = /serving (http:\/\/\S+\/)/.exec(out);
      if (m) resolve({ url: m[1], stop: () => child.kill('SIGTERM') });
    });
    child.on('exit', (code) => reject(new Error(`server.js exited (${code}) before serving: ${out}`)));
  });
}

/** A fresh headless Chromium with its own profile; resolves to {browser, close()}. */
export async function launch() {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'rnnlm-chromium-'));
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true,
    args: FLAGS, viewport: { width: 1100, height: 900 } });
  return { context, close: async () => { await context.close(); rmSync(profile, { recursive: true, force: true }); } };
}

