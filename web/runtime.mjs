// The keyboard-grade runtime in JavaScript: edge_rnn/runtime.py, line for line where it can be.
//
// A `Session` is a text field. `type(text)` steps one input symbol per character, `backspace(n)`
// takes characters back, `accept(word)` puts a suggestion in place of the partly typed word,
// `suggestions(k)` lists the words consistent with what is typed. The semantics, names and
// structure are the Python runtime's (read the two side by side); names are camelCase here, and
// every call that runs the model is async (ONNX Runtime's JavaScript API is).
//
// One module for every JavaScript host: the browser page (onnxruntime-web, WebAssembly) and the
// Node sample (onnxruntime-node) pass their ONNX Runtime in, and a `files` object that reads the
// bundle (`fetchFiles(url)` here; the Node sample reads a folder). Nothing else is imported.
//
// Backend interface (as in Python):
//   initialState() -> state
//   step(charId, state, prefix) -> [StepOutput, state]        one keystroke
//   prefill(charIds, state, prefix) -> [StepOutput, state]    many symbols in one call

export const SYMBOLS = ["<pad>", " ", ..."abcdefghijklmnopqrstuvwxyz"]; // edge_rnn.vocab.SYMBOLS
export const PAD = 0, SPACE = 1, UNK = 1; // UNK: output id 1 (an input id 1 is the space)
export const SYMBOL_ID = Object.fromEntries(SYMBOLS.map((s, k) => [s, k]).filter(([, k]) => k !== PAD));
export const RESTARTS = ["continuous", "observation"];
export const RESTART = "continuous"; // the default policy (edge_rnn.runtime: equal or better on every edge preset)
export const STACK_DEPTH = 64; // keystrokes a backspace can take back without a rebuild
export const MAX_CHARS = 200; // the longest observation training saw
export const WORD_ROOM = 16; // characters kept free for the next word when deciding to restart
export const CONTEXT_CHARS = 30; // trailing whole words carried into a restarted observation (README: measured)
export const FORMAT_VERSION = 1; // the bundle format this runtime reads (edge_rnn.export.bundle)

export class EdgeRNNError extends Error {}

const isLetter = (ch) => /^[A-Za-z]$/.test(ch);

/** Training's normalisation (ASCII-lowercase, WikiText's `<unk>` dropped, a-z kept, any other run of characters one space),
 * keeping a space at either end where `text` has a non-letter: typed text is a fragment, and a
 * trailing space means "this word is finished". */
export function normalise(text) {
  const lowered = text.replace(/[A-Z]/g, (c) => c.toLowerCase()).replaceAll("<unk>", " "); // WikiText's marker
  const core = lowered.replace(/[^a-z]+/g, " ").trim();
  if (!core) return text ? " " : "";
  const lead = isLetter(text[0]) ? "" : " ";
  const trail = isLetter(text[text.length - 1]) ? "" : " ";
  return lead + core + trail;
}

/** The symbols a fresh session steps for `raw`: normalised, a leading space, no two spaces. */
export function fieldSymbols(raw) {
  const symbols = normalise(raw);
  return !symbols || symbols.startsWith(" ") ? symbols : " " + symbols;
}

/** What one keystroke yields: the top-k, and the full distribution where available. */
export class StepOutput {
  constructor(topIds, topProbs, logProbs) {
    this.topIds = topIds; // Int32Array (k,) output ids, most probable first
    this.topProbs = topProbs; // Float32Array (k,)
    this.logProbs = logProbs; // Float32Array (nOutputs,) or null
  }
}

function bisectLeft(sorted, x, lo = 0) {
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** `[start, end)` of the ids of the words starting with `prefix`, for a vocabulary whose ids
 * `offset` onwards are `sortedWords`; every word for an empty prefix, `start == end` when none
 * matches. '{' follows 'z', so `prefix + '{'` bounds every a-z continuation. */
export function prefixRange(sortedWords, prefix, offset = 2) {
  if (!prefix) return [offset, offset + sortedWords.length];
  const lo = bisectLeft(sortedWords, prefix);
  const hi = bisectLeft(sortedWords, prefix + "{", lo);
  return [offset + lo, offset + hi];
}

/** Positions of the `k` largest `scores[positions]`, largest first; ties go to the lower id
 * (`ids[position]`, default the position itself). One pass with a k-slot buffer: O(V k). */
export function topKStable(scores, k, ids = null) {
  const best = []; // [score, id, position], sorted best first
  const n = ids ? ids.length : scores.length;
  for (let p = 0; p < n; p++) {
    const id = ids ? ids[p] : p;
    const s = scores[id];
    if (best.length === k && !(s > best[k - 1][0] || (s === best[k - 1][0] && id < best[k - 1][1]))) continue;
    let j = best.length === k ? k - 1 : best.length;
    while (j > 0 && (s > best[j - 1][0] || (s === best[j - 1][0] && id < best[j - 1][1]))) {
      best[j] = best[j - 1];
      j--;
    }
    best[j] = [s, id, p];
  }
  return best.map((b) => b[1]);
}

async function sha256Hex(bytes) {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Bundle files over HTTP(S): what the browser page uses. `read(name)` -> Uint8Array. */
export function fetchFiles(baseUrl) {
  const base = baseUrl.endsWith("/") ? baseUrl : baseUrl + "/";
  return {
    async read(name) {
      const response = await fetch(base + name);
      if (!response.ok) throw new EdgeRNNError(`bundle ${base}: ${name} is missing (HTTP ${response.status})`);
      return new Uint8Array(await response.arrayBuffer());
    },
  };
}

/** A bundle's manifest, with the size and sha256 of every file it lists verified (`read_manifest`).
 * Returns the manifest and the bytes read, so no file is downloaded twice. */
export async function readManifest(files) {
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(await files.read("manifest.json")));
  } catch (err) {
    throw new EdgeRNNError(`not a bundle (manifest.json unreadable: ${err.message})`);
  }
  const version = manifest.format_version;
  if (!Number.isInteger(version) || version > FORMAT_VERSION) {
    throw new EdgeRNNError(`bundle format version ${version} is not supported (this runtime reads up to ${FORMAT_VERSION})`);
  }
  const bytes = {};
  for (const [name, entry] of Object.entries(manifest.files ?? {})) {
    const data = await files.read(name);
    if (data.byteLength !== entry.bytes || (await sha256Hex(data)) !== entry.sha256) {
      throw new EdgeRNNError(`bundle: ${name} is damaged or was changed (sha256 mismatch)`);
    }
    bytes[name] = data;
  }
  return { manifest, bytes };
}

/** An exported ONNX bundle in ONNX Runtime (web or node): needs only the bundle. */
export class ONNXBackend {
  /** Open the bundle that `files` reads with ONNX Runtime `ort`. `files.path(name)`, where
   * present (Node), lets the runtime load a graph and its external weights from disk; otherwise
   * the graph's bytes and its weights file go in through the `externalData` option (web). */
  static async open(ort, files, { threads = 1, executionProviders } = {}) {
    const { manifest, bytes } = await readManifest(files);
    if (manifest.target !== "onnx") {
      throw new EdgeRNNError(`this is a ${manifest.target} bundle; this runtime runs ONNX bundles`);
    }
    const options = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all" };
    if (executionProviders) options.executionProviders = executionProviders;
    const load = (file) => {
      if (files.path) return ort.InferenceSession.create(files.path(file), options);
      const weights = manifest.export.weights;
      const externalData = weights ? [{ path: weights, data: bytes[weights] }] : undefined;
      return ort.InferenceSession.create(bytes[file], { ...options, externalData });
    };
    const words = JSON.parse(new TextDecoder().decode(bytes["vocab.json"])).words;
    const backend = new ONNXBackend(ort, manifest, words, load);
    // a prefix-range head split by its If's branches: the session picks the graph per range
    const split = backend.prefixHead && manifest.export.prefix_head.split;
    backend.session = await load(split ? split.narrow : manifest.export.model);
    backend._wide = split ? await load(split.wide) : null;
    backend._wideAbove = split ? manifest.export.prefix_head.full_gemm_above_rows : 0;
    // a word-boundary list: its own graph for the range of every word
    backend._boundary = split && split.boundary ? await load(split.boundary) : null;
    backend._boundaryRange = backend._boundary ? manifest.export.prefix_head.word_boundary_range : null;
    return backend;
  }

  constructor(ort, manifest, words, load) {
    this.ort = ort;
    this.manifest = manifest;
    this.task = manifest.model.task;
    this.labels = this.task === "autocomplete" ? words : SYMBOLS;
    this.stateNames = manifest.state.map((s) => s.name);
    this.units = manifest.model.units;
    this.prefixHead = Boolean(manifest.export.prefix_head);
    this.sortedWords = this.prefixHead ? this._sortedWords() : [];
    this._load = load;
    this._prefill = null; // loaded on first use: most sessions never need it
  }

  initialState() {
    return this.stateNames.map(() => new this.ort.Tensor("float32", new Float32Array(this.units), [1, this.units]));
  }

  /** The words of a prefix-range head, which must be sorted for the ranges to hold. */
  _sortedWords() {
    const words = this.labels.slice(2);
    for (let k = 1; k < words.length; k++) {
      if (!(words[k - 1] < words[k])) {
        throw new EdgeRNNError("the prefix-range head needs vocab.json's words sorted alphabetically (re-export the bundle)");
      }
    }
    return words;
  }

  /** The `range` input of a prefix-range head for the typed `prefix`. */
  range(prefix) {
    return new this.ort.Tensor("int32", Int32Array.from(prefixRange(this.sortedWords, prefix)), [2]);
  }

  /** One keystroke; a split prefix-range head runs its wide graph for wide ranges (the branch
   * its If would take), its narrow graph otherwise. */
  async step(charId, state, prefix = "") {
    const feed = { char: new this.ort.Tensor("int32", Int32Array.of(charId), [1]), ...this._states(state) };
    if (!this.prefixHead) return this._run(this.session, feed);
    const span = prefixRange(this.sortedWords, prefix);
    feed.range = new this.ort.Tensor("int32", Int32Array.from(span), [2]);
    return this._run(this.graphFor(span), feed);
  }

  /** The step graph for a prefix range: the boundary list's graph for the range of every word,
   * if the bundle has one; a split head's wide graph when the range is wider than
   * full_gemm_above_rows (the branch its If would take); else `session`. */
  graphFor(span) {
    if (this._boundary !== null && span[0] === this._boundaryRange[0] && span[1] === this._boundaryRange[1]) {
      return this._boundary;
    }
    const wide = this._wide !== null && span[1] - span[0] > this._wideAbove;
    return wide ? this._wide : this.session;
  }

  /** The bundle's prefill graph: the whole string in one call. */
  async prefill(charIds, state, prefix = "") {
    const prefill = this.manifest.export.prefill;
    if (!prefill) throw new EdgeRNNError("this bundle has no prefill graph; re-export it");
    if (this._prefill === null) this._prefill = await this._load(prefill.file);
    const chars = new this.ort.Tensor("int32", Int32Array.from(charIds), [1, charIds.length]);
    const feed = { chars, ...this._states(state) };
    if (this.prefixHead) feed.range = this.range(prefix);
    return this._run(this._prefill, feed);
  }

  _states(state) {
    return Object.fromEntries(this.stateNames.map((name, k) => [name, state[k]]));
  }

  async _run(session, feed) {
    const out = await session.run(feed);
    const logProbs = out.log_probs ? out.log_probs.data : null;
    const newState = this.stateNames.map((name) => out[`${name}_next`]);
    return [new StepOutput(out.top_ids.data, out.top_probs.data, logProbs), newState];
  }
}

/** Everything a keystroke changes: what a backspace restores. */
class Snapshot {
  constructor(text, state, last, start) {
    this.text = text;
    this.state = state;
    this.last = last;
    this.start = start; // absolute position of text[0] in everything typed (continuous mode drops the front)
  }
}

/** The state before the space at absolute position `pos`: where a rebuild may start. */
class Mark {
  constructor(pos, state) {
    this.pos = pos;
    this.state = state;
  }
}

/** A text field: type into it, take characters back, accept suggestions. */
export class Session {
  constructor(backend, { stackDepth = STACK_DEPTH, restart = RESTART, maxChars = MAX_CHARS,
    contextChars = CONTEXT_CHARS } = {}) {
    if (!RESTARTS.includes(restart)) {
      throw new EdgeRNNError(`unknown restart policy ${restart}; choose one of: ${RESTARTS.join(", ")}`);
    }
    if (stackDepth < 1 || maxChars < 2 * WORD_ROOM || !(contextChars >= 0 && contextChars < maxChars - WORD_ROOM)) {
      throw new EdgeRNNError(`impossible session sizes: stackDepth=${stackDepth}, maxChars=${maxChars}, contextChars=${contextChars}`);
    }
    this.backend = backend;
    this.stackDepth = stackDepth;
    this.restart = restart;
    this.maxChars = maxChars;
    this.contextChars = contextChars;
    this._index = new WordIndex(backend.labels, backend.task);
    this.reset();
  }

  // ---- the text field ----------------------------------------------------------------------

  /** Back to an empty text field (zero state). */
  reset() {
    this.text = ""; // the retained symbols: the state is a function of them (and of _start's mark)
    this.state = this.backend.initialState();
    this.last = null;
    this._start = 0; // absolute position of text[0]
    this._stack = []; // bounded at stackDepth: the oldest snapshot goes first
    // spaces are >= 2 symbols apart: this many marks reach back past the stack's oldest text
    this._marks = []; // bounded at maxChars + stackDepth: the oldest mark goes first
  }

  /** Normalise `text` and step each symbol. The first symbol after `reset` is a space (every
   * training observation starts with one), and no two spaces are stepped in a row. */
  async type(text) {
    for (const ch of normalise(text)) {
      if (ch === " ") {
        if (!this.text.endsWith(" ")) await this.step(SPACE);
        continue;
      }
      if (!this.text) await this.step(SPACE);
      await this.step(SYMBOL_ID[ch]);
    }
  }

  /** Take back the last `n` symbols: from the stack while it holds them, then one rebuild from
   * the nearest mark (`prefill`). The leading space goes last, leaving an empty field. */
  async backspace(n = 1) {
    if (n < 0) throw new EdgeRNNError(`backspace needs n >= 0, got ${n}`);
    while (n && this._stack.length) {
      ({ text: this.text, state: this.state, last: this.last, start: this._start } = this._stack.pop());
      n -= 1;
    }
    this._forget(this._start + this.text.length);
    if (n) await this._rebuild(this.text.slice(0, Math.max(this.text.length - n, 0)));
  }

  /** Follow a text box whose raw text went from `before` to `after`: type what was appended,
   * backspace what was deleted at the end, retype after an edit in the middle. */
  async edit(before, after) {
    const old = fieldSymbols(before), now = fieldSymbols(after);
    if (now.startsWith(old)) {
      await this.type(after.startsWith(before) ? after.slice(before.length) : now.slice(old.length));
    } else if (old.startsWith(now)) {
      await this.backspace(old.length - now.length);
    } else {
      this.reset();
      await this.type(after);
    }
  }

  /** Put `word` in place of the partly typed word and finish it with a space. */
  async accept(word) {
    if (this.backend.task !== "autocomplete" || !/^[a-z]+$/.test(word)) {
      throw new EdgeRNNError(`cannot accept ${JSON.stringify(word)}: suggestions are words of a-z`);
    }
    let partial = this.prefix;
    if (!word.startsWith(partial)) {
      await this.backspace(partial.length);
      partial = "";
    }
    await this.type(word.slice(partial.length) + " ");
  }

  /** One symbol by id (no normalisation) -> the model's top-k ids and probabilities. */
  async step(charId) {
    if (!(charId > 0 && charId < SYMBOLS.length)) {
      throw new EdgeRNNError(`symbol id must be in 1..${SYMBOLS.length - 1}, got ${charId}`);
    }
    this._stack.push(new Snapshot(this.text, this.state, this.last, this._start));
    if (this._stack.length > this.stackDepth) this._stack.shift();
    const text = this.text + SYMBOLS[charId];
    if (charId === SPACE && this._mustRestart(text)) {
      await this._restart(this._context(text));
      return [this.last.topIds, this.last.topProbs];
    }
    if (charId === SPACE) this._mark(this._start + this.text.length);
    [this.last, this.state] = await this.backend.step(charId, this.state, this._word(text));
    this.text = this._retain(text);
    return [this.last.topIds, this.last.topProbs];
  }

  /** One shot: suggestions after typing `text` into an empty field. */
  async complete(text, k = 3) {
    this.reset();
    await this.type(text);
    return this.suggestions(k);
  }

  // ---- what is typed -----------------------------------------------------------------------

  /** The typed part of the current word ("" right after a space): what suggestions match. */
  get prefix() {
    return this._word(this.text);
  }

  _word(text) {
    return this.backend.task === "autocomplete" ? text.slice(text.lastIndexOf(" ") + 1) : "";
  }

  _mustRestart(text) {
    return this.restart === "observation" && text.length + WORD_ROOM > this.maxChars;
  }

  /** The restarted observation: a space, the last whole words fitting `contextChars`, and the
   * space just typed (an observation's text, as training saw them). */
  _context(text) {
    const words = [];
    let size = 0;
    for (const word of text.split(" ").filter(Boolean).reverse()) {
      size += word.length + 1;
      if (size > this.contextChars) break;
      words.push(word);
    }
    return words.length ? " " + words.reverse().join(" ") + " " : " ";
  }

  /** Continuous mode keeps only the last `maxChars` symbols, cut at a word boundary (whose
   * mark then stands for everything before it). */
  _retain(text) {
    if (text.length <= this.maxChars) return text;
    let cut = text.indexOf(" ", text.length - this.maxChars);
    if (cut < 0) cut = text.length - this.maxChars; // no boundary: a rebuild is approximate
    this._start += cut;
    return text.slice(cut);
  }

  /** Keep the current state as the one before the space at `pos`. */
  _mark(pos) {
    this._forget(pos);
    this._marks.push(new Mark(pos, this.state));
    if (this._marks.length > this.maxChars + this.stackDepth) this._marks.shift();
  }

  /** Drop the marks at or after absolute position `end`: that text was taken back. */
  _forget(end) {
    while (this._marks.length && this._marks[this._marks.length - 1].pos >= end) this._marks.pop();
  }

  /** A new observation from the zero state (restart "observation"): its absolute positions
   * start past everything typed, so no earlier mark applies to it. */
  async _restart(text) {
    this._start += this.text.length + 1;
    this._marks = [];
    this.text = "";
    await this._rebuild(text);
  }

  /** State and output after `text` (the retained text or a prefix of it), in one prefill call
   * from the last mark inside it (else from the zero state). */
  async _rebuild(text) {
    this._forget(this._start + text.length);
    const last = this._marks[this._marks.length - 1];
    const mark = last && last.pos >= this._start ? last : null;
    this.text = text;
    this.last = null;
    this.state = mark ? mark.state : this.backend.initialState();
    if (text) {
      const ids = Array.from(text.slice(mark ? mark.pos - this._start : 0), (ch) => SYMBOL_ID[ch]);
      [this.last, this.state] = await this.backend.prefill(ids, this.state, this._word(text));
    }
  }

  // ---- suggestions -------------------------------------------------------------------------

  /** Output ids and probabilities of the up to `k` suggestions (module comment). */
  suggestionIds(k = 3) {
    if (this.last === null) return [[], []];
    return this._index.best(this.last, this.prefix, k, this.backend.prefixHead);
  }

  /** Up to `k` [word, probability], most probable first; [] before anything is typed. */
  suggestions(k = 3) {
    const [ids, probs] = this.suggestionIds(k);
    return ids.map((id, j) => [this.backend.labels[id], probs[j]]);
  }
}

/** The output words sorted once, so a prefix's candidates are one bisected range. */
export class WordIndex {
  constructor(labels, task) {
    this.labels = labels;
    this.allowed = labels.map((_, id) => id !== PAD && !(task === "autocomplete" && id === UNK));
    // alphabetical rank -> output id (char LM: no words, the prefix is always "")
    this.order = task === "autocomplete"
      ? Int32Array.from(labels.slice(2).map((_, j) => j + 2).sort((a, b) => (labels[a] < labels[b] ? -1 : labels[a] > labels[b] ? 1 : a - b)))
      : null;
    this.sortedWords = this.order ? Array.from(this.order, (id) => labels[id]) : [];
  }

  /** Output ids of the words starting with `prefix`, in alphabetical order. */
  candidates(prefix) {
    const [lo, hi] = prefixRange(this.sortedWords, prefix, 0);
    return this.order.subarray(lo, hi);
  }

  /** The `k` most probable allowed words consistent with `prefix`; ties: lower id. */
  best(out, prefix, k, prefixHead) {
    const { labels, allowed } = this;
    const top = Array.from(out.topIds);
    let shown = top.map((id, j) => [id, j]).filter(([id]) => allowed[id] && labels[id].startsWith(prefix)).map(([, j]) => j);
    // the graph's top-k is the global top-k: if k of it match, they are the range's best k
    if (prefixHead || shown.length >= k || out.logProbs === null) {
      shown = shown.slice(0, k);
      return [shown.map((j) => top[j]), shown.map((j) => out.topProbs[j])];
    }
    let best;
    if (prefix) {
      best = topKStable(out.logProbs, k, this.candidates(prefix));
    } else { // two more than asked for, then <pad> and <unk> out
      best = topKStable(out.logProbs, k + 2).filter((id) => allowed[id]).slice(0, k);
    }
    return [best, best.map((id) => Math.exp(out.logProbs[id]))];
  }
}

/** A session on the ONNX bundle that `files` reads (`fetchFiles(url)` in a browser; the Node
 * sample's folder reader); `options` go to `Session` (stackDepth, restart, maxChars, contextChars)
 * and to the backend (threads, executionProviders). */
export async function openSession(ort, files, { threads = 1, executionProviders, ...options } = {}) {
  return new Session(await ONNXBackend.open(ort, files, { threads, executionProviders }), options);
}
