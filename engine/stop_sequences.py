"""Cutting generated text at the first stop string, while streaming.

Text arrives piece by piece (one token's text at a time) and a stop string may straddle
pieces, so ``StopMatcher`` holds back the shortest tail that could still begin a stop
string and releases it once it cannot. The stop string itself is never released.
"""

from __future__ import annotations


class StopMatcher:
    """Feed pieces with ``push``; each call returns the text safe to send now.

    After a stop string is seen, ``stopped`` is True and later pushes return "".
    ``flush`` releases what is held back once generation ends without a stop.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def _hold_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return piece
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        hold = self._hold_length(text)
        self._held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held
