#!/usr/bin/env node
// Command-line autocomplete over an edge-rnn ONNX bundle, on onnxruntime-node.
//
//   node examples/node/autocomplete.mjs BUNDLE "the capital of fra"        suggestions for a text
//   node examples/node/autocomplete.mjs BUNDLE                             interactive: one line per
//        edit; a line ending in "<" takes that many characters back, "!" accepts the first suggestion
//
// The runtime is the page's own module (web/runtime.mjs); this file only reads the bundle folder
// and prints. Install with ONNXRUNTIME_NODE_INSTALL=skip (see examples/README.md).
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import * as ort from "onnxruntime-node";

import { EdgeRNNError, openSession } from "../../web/runtime.mjs";

/** A bundle folder for the runtime: bytes to verify, and paths so that onnxruntime-node loads a
 * graph together with its external weights file. */
export function dirFiles(dir) {
  return {
    read: async (name) => new Uint8Array(await readFile(join(dir, name))),
    path: (name) => join(resolve(dir), name),
  };
}

/** A session on the bundle folder `dir` (options as web/runtime.mjs openSession). */
export async function openBundle(dir, options = {}) {
  return openSession(ort, dirFiles(dir), options);
}

const show = (suggestions) => suggestions.map(([w, p]) => `${w} ${(100 * p).toFixed(1)}%`).join("  |  ");

async function main(argv) {
  const [bundle, ...text] = argv;
  if (!bundle) {
    console.error("usage: autocomplete.mjs BUNDLE [TEXT]");
    return 2;
  }
  const session = await openBundle(bundle);
  if (text.length) {
    console.log(show(await session.complete(text.join(" "), 3)));
    return 0;
  }
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    const back = line.match(/^(\d+)<$/);
    if (back) await session.backspace(Number(back[1]));
    else if (line === "!") {
      const [first] = session.suggestions(1);
      if (first) await session.accept(first[0]);
    } else await session.type(line);
    console.log(`${JSON.stringify(session.text)} -> ${show(session.suggestions(3))}`);
  }
  return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then((code) => process.exit(code), (err) => {
    console.error(`error: ${err instanceof EdgeRNNError ? err.message : err.stack}`);
    process.exit(1);
  });
}
