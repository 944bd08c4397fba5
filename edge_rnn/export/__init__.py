"""Exporters: a trained model as a per-keystroke step function, packed in a self-describing bundle.

``contract`` holds the names every side shares (state names, the prefix-range input and id order,
the format version); ``bundle`` owns the bundle format (manifest, vocabulary, checksums) and calls
the exporters; ``onnx`` and ``coreml`` each turn a model into the step function for one runtime, and
``onnx_quantize`` / ``coreml_quantize`` compress what they wrote. Imports go one way:
``bundle`` -> exporters -> ``contract``. Nothing heavy is imported here: ``onnx`` and ``coremltools`` load only when used.
"""
