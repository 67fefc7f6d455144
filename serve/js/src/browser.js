/**
 * The package in a browser: Generator.load(url) fetches the export, checks sha256 with WebCrypto
 * and runs the step function on onnxruntime-web (WASM). The page maps the bare name
 * 'onnxruntime-web' to its module with an import map (serve/web/index.html), or a bundler does.
 * @module
 */

import * as ort from 'onnxruntime-web';
import { Generator as Base } from './generator.js';

export * from './common.js';
export { ort };

const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');

export class Generator extends Base {
  /**
   * @param {string|URL} folder the export's URL (relative to the page, or absolute)
   * @param {{threads?: number, maxNewTokensCap?: number}} [options] threads: WASM threads (needs COOP/COEP)
   * @returns {Promise<Generator>}
   */
  static async load(folder, { threads, maxNewTokensCap } = {}) {
    const base = new URL(String(folder).endsWith('/') ? String(folder) : `${folder}/`, globalThis.location?.href);
    if (threads !== undefined) ort.env.wasm.numThreads = threads;
    const platform = {
      ort,
      where: base.href,
      read: async (name) => {
        const response = await fetch(new URL(name, base));
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return new Uint8Array(await response.arrayBuffer());
      },
      sha256: async (bytes) => hex(await crypto.subtle.digest('SHA-256', bytes)),
      entropy: (words) => crypto.getRandomValues(words),
      sessionOptions: { executionProviders: ['wasm'] },
    };
    return this.open(platform, { maxNewTokensCap });
  }
}
