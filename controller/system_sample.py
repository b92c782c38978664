"""What the machine can tell about itself: CPU, memory, temperature; null where it cannot.

NPU and iGPU utilisation and VRAM have no portable source on Linux/CPU machines: they are
reported as None, never guessed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

MEMORY_PRESSURE_PERCENT = 90.0
HOT_MARGIN_C = 5.0  # an excursion is within this of the sensor's own "high" mark
DEFAULT_HIGH_C = 90.0


@dataclass(frozen=True, slots=True)
class SystemSample:
    at: float
    cpu_percent: float
    cpu_count: int
    host_mem_used_gb: float
    host_mem_percent: float
    process_rss_gb: float
    temperature_c: float | None
    temperature_high_c: float | None
    vram_gb: float | None = None
    npu_util: float | None = None
    igpu_util: float | None = None

    @property
    def memory_pressure(self) -> bool:
        return self.host_mem_percent >= MEMORY_PRESSURE_PERCENT

    @property
    def hot(self) -> bool:
        if self.temperature_c is None:
            return False
        high = self.temperature_high_c or DEFAULT_HIGH_C
        return self.temperature_c >= high - HOT_MARGIN_C


def _temperature() -> tuple[float | None, float | None]:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None, None
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return None, None
    hottest: tuple[float | None, float | None] = (None, None)
    for entries in sensors.values():
        for entry in entries:
            if entry.current is not None and (hottest[0] is None or entry.current > hottest[0]):
                hottest = (float(entry.current), float(entry.high) if entry.high else None)
    return hottest


class SystemSampler:
    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        psutil.cpu_percent(None)  # the first call primes the counter

    def sample(self) -> SystemSample:
        memory = psutil.virtual_memory()
        temperature, high = _temperature()
        return SystemSample(
            at=time.time(),
            cpu_percent=psutil.cpu_percent(None),
            cpu_count=psutil.cpu_count() or 1,
            host_mem_used_gb=(memory.total - memory.available) / 2**30,
            host_mem_percent=memory.percent,
            process_rss_gb=self._process.memory_info().rss / 2**30,
            temperature_c=temperature,
            temperature_high_c=high,
        )
