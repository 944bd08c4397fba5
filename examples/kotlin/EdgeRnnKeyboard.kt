// EdgeRnnKeyboard.kt: an edge-rnn ONNX bundle in an Android keyboard, on ONNX Runtime for Android
// (Maven: com.microsoft.onnxruntime:onnxruntime-android).
//
// NOT BUILT OR RUN IN THIS REPOSITORY'S CI: there is no Android SDK or Kotlin toolchain here (and
// Maven is not reachable). What CI checks (tests/test_samples.py): every tensor name and manifest
// key in the `Names` block below exists in a freshly exported bundle. See examples/README.md.
//
// Ship `model.ort` (ONNX Runtime Mobile's format, `edge-rnn export --format onnx --ort`, works with
// a reduced build from required_operators.config) or `model.onnx` + `weights.bin` (the full
// package; load from a file path so the runtime finds the weights beside the graph).
// Semantics: edge_rnn/runtime.py (and web/runtime.mjs): a leading space after reset, one step per
// symbol, a state stack for backspace, prefix filtering by bisection or the prefix-range head.
package dev.edgernn.keyboard

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import java.io.File
import java.nio.FloatBuffer
import java.nio.IntBuffer
import org.json.JSONObject

// ---- names (checked by tests/test_samples.py) ----
object Names {
    const val CHAR = "char"            // step input: int32 [1]
    const val CHARS = "chars"          // prefill input: int32 [1, T]
    const val RANGE = "range"          // prefix-range head input: int32 [2] = [start, end)
    const val TOP_IDS = "top_ids"      // int32 [1, k]
    const val TOP_PROBS = "top_probs"  // float32 [1, k]
    const val LOG_PROBS = "log_probs"  // float32 [1, V], full-head bundles exported with it
    const val NEXT_SUFFIX = "_next"    // output "<state name>_next" for every state input
    const val MANIFEST_STATE = "state"
    const val MANIFEST_EXPORT = "export"
    const val MANIFEST_MODEL = "model"
    const val STATE_NAME = "name"
    const val UNITS = "units"
    const val PREFIX_HEAD = "prefix_head"
    const val PREFILL = "prefill"
    const val PREFILL_FILE = "file"
    const val ORT = "ort"              // export.ort.files: {"model.onnx": "model.ort", ...}
    const val ORT_FILES = "files"
    const val WORDS = "words"          // vocab.json
}
// ---- end names ----

const val STACK_DEPTH = 64

class StepOutput(val topIds: IntArray, val topProbs: FloatArray, val logProbs: FloatArray?)

/** The bundle in ONNX Runtime: step and prefill graphs, the state layout, the words. */
class Backend(folder: File, useOrtFormat: Boolean = true) : AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val manifest = JSONObject(File(folder, "manifest.json").readText())
    private val export = manifest.getJSONObject(Names.MANIFEST_EXPORT)
    val words: List<String> = JSONObject(File(folder, "vocab.json").readText()).getJSONArray(Names.WORDS)
        .let { a -> List(a.length()) { a.getString(it) } }
    val stateNames: List<String> = manifest.getJSONArray(Names.MANIFEST_STATE)
        .let { a -> List(a.length()) { a.getJSONObject(it).getString(Names.STATE_NAME) } }
    private val units = manifest.getJSONObject(Names.MANIFEST_MODEL).getInt(Names.UNITS)
    val prefixHead = export.opt(Names.PREFIX_HEAD) is JSONObject
    private val options = OrtSession.SessionOptions().apply { setIntraOpNumThreads(1) }
    private fun file(onnx: String): File {
        val ort = export.optJSONObject(Names.ORT)?.getJSONObject(Names.ORT_FILES)?.optString(onnx)
        return File(folder, if (useOrtFormat && !ort.isNullOrEmpty()) ort else onnx)
    }
    private val step = env.createSession(file(export.getString(Names.MANIFEST_MODEL)).path, options)
    private val prefill by lazy {
        env.createSession(file(export.getJSONObject(Names.PREFILL).getString(Names.PREFILL_FILE)).path, options)
    }

    fun initialState(): List<FloatArray> = stateNames.map { FloatArray(units) }

    fun step(symbol: Int, state: List<FloatArray>, range: IntArray): Pair<StepOutput, List<FloatArray>> =
        run(step, Names.CHAR, intArrayOf(symbol), longArrayOf(1), state, range)

    fun prefill(symbols: IntArray, state: List<FloatArray>, range: IntArray): Pair<StepOutput, List<FloatArray>> =
        run(prefill, Names.CHARS, symbols, longArrayOf(1, symbols.size.toLong()), state, range)

    private fun run(session: OrtSession, input: String, ids: IntArray, shape: LongArray, state: List<FloatArray>,
                    range: IntArray): Pair<StepOutput, List<FloatArray>> {
        val feed = mutableMapOf(input to OnnxTensor.createTensor(env, IntBuffer.wrap(ids), shape))
        stateNames.forEachIndexed { k, name ->
            feed[name] = OnnxTensor.createTensor(env, FloatBuffer.wrap(state[k]), longArrayOf(1, units.toLong()))
        }
        if (prefixHead) feed[Names.RANGE] = OnnxTensor.createTensor(env, IntBuffer.wrap(range), longArrayOf(2))
        session.run(feed).use { out ->
            fun floats(name: String) = (out.get(name).get().value as Array<FloatArray>)[0]
            val ids = (out.get(Names.TOP_IDS).get().value as Array<IntArray>)[0]
            val logProbs = if (out.get(Names.LOG_PROBS).isPresent) floats(Names.LOG_PROBS) else null
            val next = stateNames.map { floats(it + Names.NEXT_SUFFIX) }
            feed.values.forEach { it.close() }
            return StepOutput(ids, floats(Names.TOP_PROBS), logProbs) to next
        }
    }

    override fun close() { step.close() }
}

/** A text field: type, backspace through the state stack (prefill past its bottom), accept. */
class Session(private val backend: Backend) {
    private val words = backend.words
    // alphabetical rank -> output id: a prefix's candidates are one bisected range
    private val order: IntArray = (2 until words.size).sortedBy { words[it] }.toIntArray()
    private val sorted = order.map { words[it] }
    private data class Snapshot(val text: String, val state: List<FloatArray>, val last: StepOutput?)
    private val stack = ArrayDeque<Snapshot>()
    var text = ""; private set
    private var state = backend.initialState()
    private var last: StepOutput? = null

    val prefix: String get() = text.substringAfterLast(' ')

    fun reset() { text = ""; state = backend.initialState(); last = null; stack.clear() }

    fun type(raw: String) {
        for (ch in raw) {
            val c = if (ch in 'a'..'z' || ch in 'A'..'Z') ch.lowercaseChar() else ' '
            if (c == ' ') { if (text.isNotEmpty() && !text.endsWith(' ')) step(c); continue }
            if (text.isEmpty()) step(' ')
            step(c)
        }
    }

    private fun symbol(c: Char) = if (c == ' ') 1 else c - 'a' + 2

    private fun step(c: Char) {
        stack.addLast(Snapshot(text, state, last))
        if (stack.size > STACK_DEPTH) stack.removeFirst()
        val typed = text + c
        val (out, next) = backend.step(symbol(c), state, range(typed.substringAfterLast(' ')))
        last = out; state = next; text = typed
    }

    fun backspace(n: Int = 1) {
        var left = n
        while (left > 0 && stack.isNotEmpty()) {
            val s = stack.removeLast(); text = s.text; state = s.state; last = s.last; left--
        }
        if (left > 0) {  // past the stack's bottom: one prefill call from a zero state
            val keep = text.dropLast(left)
            reset()
            if (keep.isNotEmpty()) {
                val (out, next) = backend.prefill(keep.map(::symbol).toIntArray(), state, range(keep.substringAfterLast(' ')))
                text = keep; last = out; state = next
            }
        }
    }

    fun accept(word: String) {
        var partial = prefix
        if (!word.startsWith(partial)) { backspace(partial.length); partial = "" }
        type(word.substring(partial.length) + " ")
    }

    /** `[start, end)` output ids of the words starting with `p` (for the prefix-range head). */
    private fun range(p: String): IntArray {
        if (p.isEmpty()) return intArrayOf(2, words.size)
        val lo = lowerBound(p); val hi = lowerBound(p + "{")
        return intArrayOf(lo + 2, hi + 2)
    }

    private fun lowerBound(x: String): Int {
        var lo = 0; var hi = sorted.size
        while (lo < hi) { val mid = (lo + hi) ushr 1; if (sorted[mid] < x) lo = mid + 1 else hi = mid }
        return lo
    }

    /** Up to k (word, probability): the graph's top-k when it holds k prefix matches (always for
     * a prefix-range head), else the best of the bisected range from log_probs; ties: lower id. */
    fun suggestions(k: Int = 3): List<Pair<String, Float>> {
        val out = last ?: return emptyList()
        val p = prefix
        val shown = out.topIds.indices.filter { out.topIds[it] >= 2 && words[out.topIds[it]].startsWith(p) }
        val logProbs = out.logProbs
        if (backend.prefixHead || shown.size >= k || logProbs == null) {
            return shown.take(k).map { words[out.topIds[it]] to out.topProbs[it] }
        }
        val candidates = if (p.isEmpty()) (2 until words.size).toList()
                         else range(p).let { (lo, hi) -> order.slice(lo - 2 until hi - 2) }
        return candidates.sortedWith(compareBy({ -logProbs[it] }, { it })).take(k)
            .map { words[it] to kotlin.math.exp(logProbs[it]) }
    }
}
