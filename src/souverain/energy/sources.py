"""Power sources: where a replica's cumulative energy comes from.

    NvmlSource      the GPU board's cumulative energy counter (nvmlDeviceGetTotalEnergyConsumption)
    RaplSource      the CPU package counter under /sys/class/powercap, shared by everything on
                    the socket, so each engine gets the share matching its CPU time
    EstimateSource  CPU time of the engine process × watts per core (marked `estimated`)

A source returns cumulative joules since it was created; callers take differences.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import psutil

log = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")


class PowerSource(Protocol):
    name: str
    measured: bool

    def energy_joules(self) -> float:
        """Cumulative energy since the source was created."""
        ...


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (an engine may fork workers)."""
    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                continue
        return float(total)
    except psutil.Error:
        return 0.0


class EstimateSource:
    """Energy from CPU time: busy core-seconds × watts per core. An estimate, and says so."""

    name = "estimate"
    measured = False

    def __init__(self, cpu_seconds: Callable[[], float], *, watts_per_core: float) -> None:
        self._cpu_seconds = cpu_seconds
        self._watts = watts_per_core
        self._origin = cpu_seconds()

    def energy_joules(self) -> float:
        return max(0.0, self._cpu_seconds() - self._origin) * self._watts


class RaplSource:
    """The package energy counters (intel-rapl:N/energy_uj), wrap-around handled, scaled by
    the engine's share of the node's CPU time since the previous reading."""

    name = "rapl"
    measured = True

    def __init__(
        self,
        cpu_seconds: Callable[[], float],
        *,
        root: Path = POWERCAP,
        node_cpu_seconds: Callable[[], float] | None = None,
    ) -> None:
        self._zones = [z for z in sorted(root.glob("intel-rapl:*")) if z.name.count(":") == 1]
        if not self._zones:
            raise FileNotFoundError(f"no RAPL package zone under {root}")
        self._cpu_seconds = cpu_seconds
        self._node_cpu_seconds = node_cpu_seconds or _node_busy_seconds
        self._last_counters = [self._read(z) for z in self._zones]
        self._last_process = cpu_seconds()
        self._last_node = self._node_cpu_seconds()
        self._total = 0.0

    @staticmethod
    def _read(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def energy_joules(self) -> float:
        package_j = 0.0
        for index, zone in enumerate(self._zones):
            now = self._read(zone)
            delta = now - self._last_counters[index]
            if delta < 0:  # the counter wrapped
                delta += int((zone / "max_energy_range_uj").read_text())
            self._last_counters[index] = now
            package_j += delta / 1e6
        process, node = self._cpu_seconds(), self._node_cpu_seconds()
        busy_process, busy_node = process - self._last_process, node - self._last_node
        self._last_process, self._last_node = process, node
        share = min(1.0, busy_process / busy_node) if busy_node > 0 else 0.0
        self._total += package_j * share
        return self._total


def _node_busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.system + getattr(times, "nice", 0.0))


class NvmlSource:
    """Sum of the cumulative energy counters (millijoules) of the GPUs given to the engine."""

    name = "nvml"
    measured = True

    def __init__(self, gpu_indices: Sequence[int], *, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml  # optional: installed on GPU nodes (nvidia-ml-py)

            pynvml.nvmlInit()
            nvml = pynvml
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in gpu_indices]
        self._origin = self._millijoules()

    def _millijoules(self) -> int:
        return sum(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles)

    def energy_joules(self) -> float:
        return (self._millijoules() - self._origin) / 1000.0


def pick_source(
    *, gpu_indices: Sequence[int], cpu_seconds: Callable[[], float], watts_per_core: float
) -> PowerSource:
    """The best source available on this node: NVML for GPU replicas, then RAPL, then an estimate."""
    if gpu_indices:
        try:
            return NvmlSource(gpu_indices)
        except Exception as error:  # no driver, no pynvml, or an unsupported board
            log.warning("NVML unavailable (%s); falling back", error)

    if os.access(POWERCAP, os.R_OK):
        try:
            return RaplSource(cpu_seconds)
        except (OSError, ValueError):
            pass
    return EstimateSource(cpu_seconds, watts_per_core=watts_per_core)
