"""KV-cache library: chunks, quantizers, importance, level decisions, prefix index."""
