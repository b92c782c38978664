"""The quality guard: parked KV re-leveled by the policy, within a ΔPPL budget.

``QualityGuard.relevel(store)`` is what the prefix cache runs after each save and after a
policy change: ``KvStore.apply_policy`` with the policy's thresholds, window and sinks
(``decide_level``), kept within ``max_delta_ppl`` by the model's KV calibration
(engine/kv_calibration.py: the ΔPPL of this model's KV at each level, measured on real
text when the model was prepared), then the byte budget.

``delta_ppl_est`` is the calibration's estimate for the KV the store holds: the tokens at
each of L0..L2 by the level of the loss in their data (evicted tokens cost a recompute,
not quality, and are not counted). When the plan of a round would pass the budget, the
guard promotes: the most important blocks that ``decide_level`` would demote stay exact
(or, already quantized, stay where they are); when the estimate of what is held already
passes it (the budget was lowered, or the byte budget forced demotions), nothing goes
lower. Quantized data cannot be made exact again short of a recompute, so "back toward
L0" never moves a quantized chunk up: that would cost memory and restore nothing (see
kvstore/leveling.py). The byte budget stays a hard limit and may still demote past the
quality budget; the estimate then says so.

``promotions`` counts the rounds in which the guard overrode ``decide_level``; the first
of a run of such rounds is logged as an event. Without a calibration the estimate is null,
the guard cannot act, and ``stats`` says why.

Not thread-safe: it runs on the engine's one generation thread, as the store does; the
event loop reads only the figures it publishes (plain attributes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from inferos.engine import kv_calibration
from inferos.kvstore.levels import Level, QualitySignal
from inferos.kvstore.store import KvStore, PolicyRound

__all__ = ["Calibration", "QualityGuard"]

log = logging.getLogger(__name__)


class Calibration(Protocol):
    def estimate(self, tokens_by_level: Mapping[str, int]) -> float: ...


class QualityGuard:
    def __init__(self, calibration: Calibration | None, max_delta_ppl: float,
                 no_calibration: str | None = None) -> None:
        self.calibration = calibration
        self.max_delta_ppl = max_delta_ppl
        self.no_calibration = None if calibration is not None else (
            no_calibration or "no KV calibration for this model: the quality guard cannot "
                              "estimate ΔPPL")
        self.delta_ppl_est: float | None = 0.0 if calibration is not None else None
        self.promotions = 0
        self.last_promotion_at: float | None = None
        self.held_blocks = 0  # blocks kept above decide_level's answer in the last round
        self._acting = False

    @classmethod
    def for_model(cls, folder: Path, max_delta_ppl: float) -> QualityGuard:
        """The guard of the prepared model in ``folder``, with its cached calibration."""
        calibration = kv_calibration.load(folder)
        reason = (f"no KV calibration for this model ({kv_calibration.CALIBRATION_FILE} is "
                  "absent or unreadable beside it; `inferos model prepare` measures it): the "
                  "quality guard cannot estimate ΔPPL")
        return cls(calibration, max_delta_ppl, reason)

    def cost(self, tokens: Mapping[Level, int]) -> float:
        assert self.calibration is not None
        return self.calibration.estimate({lvl.name: n for lvl, n in tokens.items()
                                          if lvl is not Level.L3})

    def relevel(self, store: KvStore) -> PolicyRound:
        if self.calibration is None:
            return store.apply_policy()
        held = self.cost(store.loss_tokens())
        signal = QualitySignal(held, self.max_delta_ppl)
        done = store.apply_policy(signal, self.cost)
        self.delta_ppl_est = self.cost(store.loss_tokens())
        self.held_blocks = done.lifted_blocks
        acting = signal.degraded or done.lifted_blocks > 0
        if acting:
            self.promotions += 1
            self.last_promotion_at = time.time()
            if not self._acting:
                log.warning("quality guard: estimated ΔPPL %.4g %s the budget %.4g; "
                            "parked KV goes no lower (%d blocks kept exact)",
                            held if signal.degraded else self.delta_ppl_est,
                            "is over" if signal.degraded else "would pass",
                            self.max_delta_ppl, done.lifted_blocks)
        self._acting = acting
        return done

    def stats(self) -> dict[str, Any]:
        est = self.delta_ppl_est
        return {
            "delta_ppl_est": None if est is None else round(est, 6),
            "calibrated": self.calibration is not None,
            "guard": {"max_delta_ppl": self.max_delta_ppl, "promotions": self.promotions,
                      "last_promotion_at": self.last_promotion_at,
                      "held_blocks": self.held_blocks,
                      "can_act": self.calibration is not None,
                      "reason": self.no_calibration},
        }
