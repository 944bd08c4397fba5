// EdgeRNNKeyboard.swift: an edge-rnn Core ML bundle in an iOS keyboard (or any Swift app).
//
// NOT BUILT OR RUN IN THIS REPOSITORY'S CI: there is no Swift toolchain and no Apple device here.
// What CI checks (tests/test_samples.py): every tensor name and manifest key in the `Names` block
// below exists in a freshly exported bundle of each form. See examples/README.md.
//
// Both bundle forms of `edge-rnn export --format coreml`:
//   --coreml-state io       (iOS 15+): the state tensors are model inputs and `<name>_next` outputs
//   --coreml-state mlstate  (iOS 18+): the state lives in an MLState from `model.makeState()`
// The semantics are edge_rnn/runtime.py's (and web/runtime.mjs's): a leading space after reset, one
// step per symbol, a state stack for backspace, suggestions filtered by the typed prefix.

import CoreML
import Foundation

// ---- names (checked by tests/test_samples.py) ----
enum Names {
    static let char = "char"  // input: int32 [1], the symbol id
    static let topIds = "top_ids"  // output: int32 [1, k]
    static let topProbs = "top_probs"  // output: float32 [1, k]
    static let nextSuffix = "_next"  // io form: output "<state name>_next" for every state input
    static let manifestState = "state"  // manifest: [{name, shape, ...}] in contract order
    static let manifestExport = "export"  // manifest: {state_form, states, model, ...}
    static let stateForm = "state_form"  // "io" or "mlstate"
    static let modelFile = "model"  // export.model: "model.mlpackage" (compile it to .mlmodelc)
    static let stateName = "name"
    static let units = "units"  // manifest.model.units
    static let manifestModel = "model"
    static let words = "words"  // vocab.json: output id -> word (0 <pad>, 1 <unk>)
}
// ---- end names ----

let symbols: [Character] = [" "] + Array("abcdefghijklmnopqrstuvwxyz")  // ids 1...27; 0 is <pad>
let stackDepth = 64

struct StepOutput { let topIds: [Int]; let topProbs: [Float] }

/// One model step per symbol; the state is opaque to the session, and a snapshot restores it.
protocol Backend {
    func reset() throws
    func step(_ symbol: Int32) throws -> StepOutput
    func snapshot() -> Any
    func restore(_ saved: Any)
}

private func outputs(_ result: MLFeatureProvider) -> StepOutput {
    let ids = result.featureValue(for: Names.topIds)!.multiArrayValue!
    let probs = result.featureValue(for: Names.topProbs)!.multiArrayValue!
    return StepOutput(topIds: (0..<ids.count).map { ids[$0].intValue },
                      topProbs: (0..<probs.count).map { probs[$0].floatValue })
}

private func charInput(_ symbol: Int32) throws -> MLMultiArray {
    let array = try MLMultiArray(shape: [1], dataType: .int32)
    array[0] = NSNumber(value: symbol)
    return array
}

/// iOS 15+: state tensors in, `<name>_next` out; the session keeps them between keystrokes.
final class IOBackend: Backend {
    let model: MLModel, stateNames: [String], units: Int
    var state: [String: MLMultiArray] = [:]

    init(model: MLModel, stateNames: [String], units: Int) throws {
        self.model = model; self.stateNames = stateNames; self.units = units
        try reset()
    }

    func reset() throws {
        state = [:]
        for name in stateNames {
            let zeros = try MLMultiArray(shape: [1, NSNumber(value: units)], dataType: .float32)
            for k in 0..<zeros.count { zeros[k] = 0 }
            state[name] = zeros
        }
    }

    func step(_ symbol: Int32) throws -> StepOutput {
        var features: [String: Any] = [Names.char: try charInput(symbol)]
        for (name, value) in state { features[name] = value }
        let result = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: features))
        for name in stateNames { state[name] = result.featureValue(for: name + Names.nextSuffix)!.multiArrayValue! }
        return outputs(result)
    }

    func snapshot() -> Any { state }  // the arrays are replaced each step, never written: no copy
    func restore(_ saved: Any) { state = saved as! [String: MLMultiArray] }
}

/// iOS 18+: Core ML states (fp16 buffers) updated in place by each prediction.
@available(iOS 18.0, macOS 15.0, *)
final class StateBackend: Backend {
    let model: MLModel, stateNames: [String]
    var state: MLState

    init(model: MLModel, stateNames: [String]) {
        self.model = model; self.stateNames = stateNames
        state = model.makeState()  // zeros
    }

    func reset() throws { state = model.makeState() }

    func step(_ symbol: Int32) throws -> StepOutput {
        let input = try MLDictionaryFeatureProvider(dictionary: [Names.char: try charInput(symbol)])
        return outputs(try model.prediction(from: input, using: state))
    }

    /// The state is updated in place: a snapshot copies its buffers out, a restore writes them back.
    func snapshot() -> Any {
        stateNames.map { name in state.withMultiArray(for: name) { array in
            (0..<array.count).map { array[$0].floatValue } } }
    }

    func restore(_ saved: Any) {
        for (name, values) in zip(stateNames, saved as! [[Float]]) {
            state.withMultiArray(for: name) { array in
                for (k, v) in values.enumerated() { array[k] = NSNumber(value: v) } }
        }
    }
}

/// A text field over a backend: type, backspace through the state stack, accept, suggestions.
final class Session {
    let backend: Backend, words: [String]
    private(set) var text = ""  // the symbols stepped so far (normalised)
    private var last: StepOutput?
    private var stack: [(text: String, state: Any, last: StepOutput?)] = []

    init(backend: Backend, words: [String]) { self.backend = backend; self.words = words }

    var prefix: String { String(text.split(separator: " ", omittingEmptySubsequences: false).last ?? "") }

    func reset() throws { try backend.reset(); text = ""; last = nil; stack = [] }

    /// Normalised like training: ASCII letters lowercased, any other run of characters one space,
    /// a space first after reset, never two in a row.
    func type(_ raw: String) throws {
        for ch in raw {
            let c: Character = (ch.isASCII && ch.isLetter) ? Character(ch.lowercased()) : " "
            if c == " " { if !text.isEmpty && !text.hasSuffix(" ") { try step(c) }; continue }
            if text.isEmpty { try step(" ") }
            try step(c)
        }
    }

    private func step(_ c: Character) throws {
        stack.append((text, backend.snapshot(), last))
        if stack.count > stackDepth { stack.removeFirst() }
        last = try backend.step(Int32(symbols.firstIndex(of: c)! + 1))
        text.append(c)
    }

    /// Pop the stack; past its bottom, re-step the remaining text from a zero state (a Core ML
    /// bundle has no prefill graph).
    func backspace(_ n: Int = 1) throws {
        var n = n
        while n > 0, let top = stack.popLast() { text = top.text; backend.restore(top.state); last = top.last; n -= 1 }
        if n > 0 {
            let keep = String(text.dropLast(n))
            try reset()
            for c in keep { try step(c) }
        }
    }

    func accept(_ word: String) throws {
        var partial = prefix
        if !word.hasPrefix(partial) { try backspace(partial.count); partial = "" }
        try type(String(word.dropFirst(partial.count)) + " ")
    }

    /// The graph's top-k, <pad>/<unk> out, filtered by the typed prefix (export with a larger
    /// --top-k for more candidates per keystroke).
    func suggestions(_ k: Int = 3) -> [(String, Float)] {
        guard let last else { return [] }
        let p = prefix
        return zip(last.topIds, last.topProbs)
            .filter { $0.0 >= 2 && words[$0.0].hasPrefix(p) }
            .prefix(k).map { (words[$0.0], $0.1) }
    }
}

/// Open a bundle folder (manifest.json, vocab.json, model.mlpackage compiled to .mlmodelc).
func openBundle(_ folder: URL) throws -> Session {
    let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("manifest.json"))) as! [String: Any]
    let vocab = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("vocab.json"))) as! [String: Any]
    let export = manifest[Names.manifestExport] as! [String: Any]
    let stateNames = (manifest[Names.manifestState] as! [[String: Any]]).map { $0[Names.stateName] as! String }
    let units = (manifest[Names.manifestModel] as! [String: Any])[Names.units] as! Int
    let compiled = try MLModel.compileModel(at: folder.appendingPathComponent(export[Names.modelFile] as! String))
    let config = MLModelConfiguration()
    config.computeUnits = .cpuAndNeuralEngine
    let model = try MLModel(contentsOf: compiled, configuration: config)
    let backend: Backend
    if export[Names.stateForm] as? String == "mlstate", #available(iOS 18.0, macOS 15.0, *) {
        backend = StateBackend(model: model, stateNames: stateNames)
    } else {
        backend = try IOBackend(model: model, stateNames: stateNames, units: units)
    }
    return Session(backend: backend, words: vocab[Names.words] as! [String])
}
