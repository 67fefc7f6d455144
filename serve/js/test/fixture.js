/**
 * The Python side of the cross-language tests: tests/js_fixture.py writes small exports and the
 * Python runtime's answers into a folder, and tests/test_js.py runs these tests with
 * RNNLM_JS_FIXTURE naming it. Run alone (`npm test`), the tests that need it are skipped, saying so.
 */

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const FOLDER = process.env.RNNLM_JS_FIXTURE;
export const SKIP = FOLDER ? false : 'RNNLM_JS_FIXTURE is not set: run through `pytest tests/test_js.py` '
  + '(or `python tests/js_fixture.py DIR` and set RNNLM_JS_FIXTURE=DIR)';
export const expected = FOLDER ? JSON.parse(readFileSync(join(FOLDER, 'expected.json'), 'utf8')) : null;
export const exportOf = (name) => join(FOLDER, name);

/** Options as JSON holds them, with seeds (strings, for 64-bit exactness) as BigInts. */
export function options(o) {
  if (o.seed === undefined) return o;
  return { ...o, seed: Array.isArray(o.seed) ? o.seed.map(BigInt) : BigInt(o.seed) };
}
