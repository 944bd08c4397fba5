// node --test: the JavaScript runtime on onnxruntime-node against the Python runtime.
//
// tests/test_app.py writes what edge_rnn.runtime suggests after each edit of a scenario (for a
// plain and a prefix-head bundle) to a JSON file and runs this with EDGE_RNN_APP_CASES=that file.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { normalise } from "../../web/runtime.mjs";
import { openBundle } from "./autocomplete.mjs";

const path = process.env.EDGE_RNN_APP_CASES;
if (!path) throw new Error("set EDGE_RNN_APP_CASES to the JSON file tests/test_app.py writes");
const cases = JSON.parse(readFileSync(path, "utf8"));

for (const c of cases) {
  test(`same suggestions as edge_rnn.runtime: ${c.bundle}, restart=${c.restart}`, async () => {
    const session = await openBundle(c.bundle, { stackDepth: c.stack_depth, maxChars: c.max_chars, restart: c.restart });
    for (const step of c.steps) {
      const [action, arg] = step.action;
      if (action === "type") await session.type(arg);
      else if (action === "backspace") await session.backspace(arg);
      else await session.accept(session.suggestions(c.k)[arg][0]);
      const got = session.suggestions(c.k);
      const where = `after ${action} ${JSON.stringify(arg)}`;
      assert.equal(session.text, step.text, where);
      assert.deepEqual(got.map(([w]) => w), step.suggestions.map(([w]) => w), where);
      got.forEach(([, p], j) => assert.ok(Math.abs(p - step.suggestions[j][1]) < 1e-5, `${where}: p ${p} vs ${step.suggestions[j][1]}`));
    }
  });

  test(`normalise as edge_rnn.runtime.normalise: ${c.bundle}, restart=${c.restart}`, () => {
    for (const [text, want] of Object.entries(c.normalise)) assert.equal(normalise(text), want, JSON.stringify(text));
  });
}
