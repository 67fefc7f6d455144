/**
 * The package under Node: Generator.load(path) reads the export with node:fs (refusing links that
 * lead out of the folder), checks sha256 with node:crypto and runs the step function on
 * onnxruntime-node (CPU).
 * @module
 */

import { createHash, randomFillSync } from 'node:crypto';
import { readFile, realpath } from 'node:fs/promises';
import { join, sep } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Generator as Base } from './generator.js';

export * from './common.js';

export class Generator extends Base {
  /**
   * @param {string} folder the export's path
   * @param {{threads?: number, maxNewTokensCap?: number}} [options] threads: onnxruntime's intra-op threads
   * @returns {Promise<Generator>}
   */
  static async load(folder, { threads, maxNewTokensCap } = {}) {
    if (typeof folder !== 'string') throw new Error(`Generator.load takes the export's path, got ${typeof folder}`);
    if (threads !== undefined && (!Number.isSafeInteger(threads) || threads < 1)) {
      throw new Error(`threads must be an integer >= 1 (or left out for onnxruntime's choice), got ${threads}`);
    }
    const platform = {
      ort,
      where: folder,
      read: async (name) => {
        const [root, path] = await Promise.all([realpath(folder), realpath(join(folder, name))]);
        if (!path.startsWith(root + sep)) throw new Error(`it is a link to ${path}, outside the folder`);
        return new Uint8Array(await readFile(path));
      },
      sha256: async (bytes) => createHash('sha256').update(bytes).digest('hex'),
      entropy: (words) => randomFillSync(words),
      sessionOptions: { executionProviders: ['cpu'], interOpNumThreads: 1, executionMode: 'sequential',
        ...(threads ? { intraOpNumThreads: threads } : {}) },
    };
    return this.open(platform, { maxNewTokensCap });
  }
}
