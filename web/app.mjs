// The demo page: a text box over web/runtime.mjs on onnxruntime-web (WebAssembly, one thread).
// Served by `edge-rnn demo BUNDLE`: the page at /, onnxruntime-web's files at /ort/, the bundle at
// /bundle/ (all from 127.0.0.1: it works with the network unplugged).
//
// Every input event becomes one `session.edit(before, after)` (type what was appended, backspace
// what was deleted, through the state stack); edits run one after another, in order. The page
// publishes what tests and benchmarks read as `window.edgeRnn`.
import * as ort from "./ort/ort.wasm.min.mjs";

import { fetchFiles, openSession } from "./runtime.mjs";

const K = 3;
const box = document.getElementById("text");
const chips = [...document.querySelectorAll(".chip")];
const status = document.getElementById("status");

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // a keyboard has one core to spare (and threads need cross-origin isolation)

const timings = { readyMs: null, firstSuggestionMs: null, keystrokesMs: [] };
let session = null;
let shown = ""; // the box's text that the session has caught up with
let queue = Promise.resolve();

function render() {
  const suggestions = session.suggestions(K);
  chips.forEach((chip, j) => {
    const [word, p] = suggestions[j] ?? ["", 0];
    chip.disabled = !word;
    chip.dataset.word = word;
    chip.querySelector(".word").textContent = word;
    chip.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    chip.querySelector(".prob").textContent = word ? `${(100 * p).toFixed(1)} %` : "";
  });
}

/** Bring the session to the box's current text; time it (the keystroke's latency). */
function follow() {
  queue = queue.then(async () => {
    const after = box.value;
    if (after === shown) return;
    const t0 = performance.now();
    await session.edit(shown, after);
    shown = after;
    render();
    const ms = performance.now() - t0;
    timings.keystrokesMs.push(ms);
    if (timings.firstSuggestionMs === null) timings.firstSuggestionMs = performance.now();
    status.textContent = `last keystroke: ${ms.toFixed(2)} ms (model step + suggestions + page update)`;
  }).catch(fail);
  return queue;
}

/** Accept a chip: the partly typed word becomes the suggestion and a space. */
function accept(word) {
  queue = queue.then(async () => {
    const t0 = performance.now();
    await session.accept(word);
    box.value = box.value.replace(/[A-Za-z]*$/, "") + word + " ";
    shown = box.value;
    render();
    const ms = performance.now() - t0;
    timings.keystrokesMs.push(ms);
    status.textContent = `last keystroke: ${ms.toFixed(2)} ms (accept "${word}")`;
    box.focus();
  }).catch(fail);
  return queue;
}

function fail(err) {
  status.textContent = `error: ${err.message ?? err}`;
  status.classList.add("error");
  throw err;
}

async function start() {
  // ?stack=N&chars=M: a shallow state stack and a short retained text (tests)
  const params = new URLSearchParams(location.search);
  const options = { threads: 1, ...(params.has("stack") ? { stackDepth: Number(params.get("stack")) } : {}),
    ...(params.has("chars") ? { maxChars: Number(params.get("chars")) } : {}) };
  session = await openSession(ort, fetchFiles(new URL("./bundle/", import.meta.url).href), options);
  const m = session.backend.manifest;
  const listed = m.export.prefix_head && m.export.prefix_head.boundary_words;
  const head = !m.export.prefix_head ? "full head"
    : listed ? `prefix-range head, ${listed}-word boundary list` : "prefix-range head";
  const precision = m.quantization ? m.quantization.to : m.export.precision;
  document.getElementById("model").textContent =
    `${m.model.cell.toUpperCase()} ${m.model.layers}x${m.model.units}, ${m.model.n_outputs - 2} words, ` +
    `${precision}, ${head}; ONNX Runtime Web ${ort.env.versions?.web ?? ""} (WebAssembly, 1 thread)`;
  timings.readyMs = performance.now();
  box.disabled = false;
  box.addEventListener("input", follow);
  chips.forEach((chip) => chip.addEventListener("click", () => accept(chip.dataset.word)));
  box.focus();
  if (box.value) await follow();
}

const ready = start().catch(fail);
window.edgeRnn = {
  ready,
  timings,
  get session() { return session; },
  idle: () => ready.then(() => queue), // resolves when every edit so far has been applied
  suggestions: () => session.suggestions(K),
  accept,
};
