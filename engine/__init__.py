"""The embedded backend: a Lemonade-compatible server on ONNX Runtime that owns its KV cache."""
