"""Route labels: Lemonade serves every endpoint under several prefixes; metrics want one name.

Labels are drawn from a closed set so a client cannot grow the metric cardinality.
"""

from __future__ import annotations

PREFIXES = ("/api/v1/", "/api/v0/", "/v1/", "/v0/")

KNOWN = frozenset(
    {
        "chat/completions",
        "completions",
        "responses",
        "embeddings",
        "reranking",
        "tokenize",
        "messages",
        "models",
        "load",
        "unload",
        "pull",
        "delete",
        "params",
        "install",
        "health",
        "stats",
        "system-info",
        "live",
        "halt",
        "metrics",
    }
)
# Routes whose responses carry generated tokens, so TTFT and token rates mean something.
GENERATION = frozenset({"chat/completions", "completions", "responses", "messages",
                        "ollama/chat", "ollama/generate"})
OLLAMA = frozenset({"chat", "generate", "tags", "show", "ps", "version", "embed", "embeddings"})


def route_label(path: str) -> str:
    """``/api/v1/chat/completions`` -> ``chat/completions``; unknown paths -> ``other``."""
    for prefix in PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix):].strip("/")
            if rest in KNOWN:
                return rest
            if rest.startswith("models/"):
                return "models/{id}"
            break
    else:
        if path.startswith("/api/"):
            rest = path[len("/api/"):].strip("/")
            if rest in OLLAMA:
                return f"ollama/{rest}"
        if path.strip("/") in ("live", "health", "metrics"):
            return path.strip("/")
    return "other"


def is_generation(route: str) -> bool:
    return route in GENERATION
