import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SCHEMA } from '../src/manifest.js';
import { expected, SKIP } from './fixture.js';

test('the manifest is checked field for field as the Python runtime checks it', { skip: SKIP }, () => {
  const js = SCHEMA.map(([path, type, rule, optional]) => ({ path, type, optional: optional === true, rule: rule ? rule[1] : null }));
  assert.deepEqual(js, expected.schema);
});
