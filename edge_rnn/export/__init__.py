"""Exporters: a trained model as a per-keystroke step function, packed in a self-describing bundle.

``bundle`` owns the bundle format (manifest, vocabulary, checksums) and the step function's naming
contract (``state_names``); ``onnx`` and ``coreml`` each turn a model into that step function for
one runtime. Nothing heavy is imported here: ``onnx`` and ``coremltools`` load only when used.
"""
