"""A process for the fail-safe's tests: a real ``ProxyServer`` with the ``FailSafe`` watchdog on
its event loop, and a thread that beats the heartbeat every millisecond as the controller's
fast loop does (and registers itself as the controller's thread). A test stops this whole
process, or starves that thread, from outside, which no test can do to itself.

Commands on stdin, one JSON answer per line on stdout:

- ``status``: trips, reason, failsafe_since, hung_at, starved, stall_s, probed;
- ``hang``: the beating thread blocks on an event, as a controller stuck in a call does.

``--pin``: the beating thread runs on CPU 0 only and the data plane on CPU 1, so that a
test can starve the one and not the other.

    python -m tests.controller.failsafe_child [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

from inferos.controller.failsafe import FailSafe, FailsafeSettings
from inferos.proxy.server import ProxyServer
from inferos.proxy.settings import HostPort, ProxySettings
from inferos.tasks import TaskGroup


def _beat(failsafe: FailSafe, started: threading.Event, hang: threading.Event,
          hung: dict[str, float], pin: bool) -> None:
    if pin:
        os.sched_setaffinity(0, {0})  # this thread only (Linux affinity is per thread)
    failsafe.register_controller_thread()
    started.set()
    while not hang.is_set():
        failsafe.heartbeat()
        time.sleep(0.001)
    hung["at"] = time.monotonic()
    threading.Event().wait()  # blocked for good


async def main(pin: bool) -> None:
    if pin:
        os.sched_setaffinity(0, {1})
    here = HostPort("127.0.0.1", 0)
    server = ProxyServer(ProxySettings(upstream="http://127.0.0.1:9", listen=here, admin=here))
    # recovery far away: a trip stays visible until the test has looked
    failsafe = FailSafe(server.data_plane, FailsafeSettings(recover_after_s=600),
                        server.registry)
    started, hang = threading.Event(), threading.Event()
    hung: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def answer(fields: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    async with server:
        tasks = TaskGroup()
        tasks.start(failsafe.watch(), name="failsafe-watchdog")
        threading.Thread(target=_beat, args=(failsafe, started, hang, hung, pin),
                         name="controller", daemon=True).start()
        while not started.is_set() or failsafe.last_evidence is None:
            await asyncio.sleep(0.01)
        answer({"ready": True, "admin": server.admin_url, "pid": os.getpid()})
        while line := (await stdin.readline()).decode().strip():
            if line == "hang":
                hang.set()
                while "at" not in hung:
                    await asyncio.sleep(0.001)
            snapshot = server.data_plane.snapshot
            answer({"trips": failsafe.trips, "reason": snapshot.failsafe_reason,
                    "failsafe_since": snapshot.failsafe_since, "hung_at": hung.get("at"),
                    "starved": failsafe.starved, "stall_s": failsafe.stall_s,
                    "probed": failsafe.describe()["controller_thread_probed"]})
        await tasks.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pin", action="store_true")
    asyncio.run(main(parser.parse_args().pin))
