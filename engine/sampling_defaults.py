"""What a request that names no sampling parameter gets: llama.cpp's server defaults.

Lemonade runs GGUF models on llama.cpp's server, which samples by default (temperature 0.8,
top_k 40, top_p 0.95, min_p 0.05, no repeat penalty). Greedy decoding by default made this
small model loop to the end of its 8,192-token context on Open WebUI's follow-up and tag
requests, which send no ``max_tokens`` (5½ minutes each). Two more guards:

- a fixed default seed, so that identical requests with identical parameters give identical
  outputs (as Lemonade's engines do); an explicit ``seed`` is reproducible too, in a batch
  or alone, because every sequence draws from its own generator;
- a default completion cap for requests without ``max_tokens``/``max_completion_tokens``,
  as Lemonade's ONNX path caps through ``max_new_tokens``: such a request ends with
  ``finish_reason: "length"`` after ``max_tokens`` tokens. A client that wants more says so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int = 42
    max_tokens: int = 1024


DEFAULTS = SamplingDefaults()
