"""Power sources, attribution and carbon arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from souverain.energy.attribution import Served, attribute, co2e_grams
from souverain.energy.carbon import DEFAULT_INTENSITY, intensity_at, parse_series
from souverain.energy.sources import EstimateSource, NvmlSource, RaplSource


class Clock:
    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        return self.value


class TestAttribution:
    @given(
        energy=st.floats(0, 1e7, allow_nan=False),
        served=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), max_size=50),
        weights=st.tuples(st.floats(0, 10), st.floats(0, 10)),
    )
    def test_conservation(
        self, energy: float, served: list[tuple[int, int]], weights: tuple[float, float]
    ) -> None:
        records = [Served(f"r{i}", p, c) for i, (p, c) in enumerate(served)]
        split = attribute(energy, records, prompt_weight=weights[0], completion_weight=weights[1])
        assert sum(split.per_record.values()) + split.idle_j == pytest.approx(
            energy, rel=1e-9, abs=1e-9
        )
        assert all(j >= 0 for j in split.per_record.values())

    def test_completion_tokens_weigh_more(self) -> None:
        split = attribute(400.0, [Served("prefill", 100, 0), Served("decode", 0, 100)])
        assert split.per_record == {"prefill": 100.0, "decode": 300.0}

    def test_nothing_served_is_idle(self) -> None:
        assert attribute(50.0, []).idle_j == 50.0

    def test_co2e(self) -> None:
        assert co2e_grams(3.6e6, 56.0) == pytest.approx(56.0)


class TestSources:
    def test_estimate_is_cpu_time_times_watts(self) -> None:
        clock = Clock()
        source = EstimateSource(clock, watts_per_core=12.0)
        clock.value = 2.5
        assert source.energy_joules() == pytest.approx(30.0)
        assert source.name == "estimate" and not source.measured

    def test_rapl_counts_the_engine_share_and_survives_wraparound(self, tmp_path: Path) -> None:
        zone = tmp_path / "intel-rapl:0"
        zone.mkdir()
        (zone / "max_energy_range_uj").write_text("1000000000")
        (zone / "energy_uj").write_text("999000000")
        engine, node = Clock(), Clock()
        source = RaplSource(engine, root=tmp_path, node_cpu_seconds=node)
        (zone / "energy_uj").write_text("1000000")  # wrapped: +2,000,000 µJ = 2 J
        engine.value, node.value = 1.0, 4.0  # the engine used a quarter of the node's CPU
        assert source.energy_joules() == pytest.approx(0.5)
        assert source.measured

    def test_rapl_needs_a_package_zone(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            RaplSource(Clock(), root=tmp_path)

    def test_nvml_sums_the_engines_gpus(self) -> None:
        counters = {0: 5_000, 1: 7_000, 2: 1_000_000}

        class FakeNvml:
            def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
                return index

            def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
                return counters[handle]

        source = NvmlSource([0, 1], nvml=FakeNvml())
        counters[0] += 3_000
        counters[1] += 2_000
        counters[2] += 999_999  # another replica's GPU
        assert source.energy_joules() == pytest.approx(5.0)


class TestCarbon:
    def test_series_then_static(self) -> None:
        series = parse_series(["hour,g_per_kwh", "2026-11-29T10:00:00Z,31", "2026-11-29T11:00,45"])
        at_ten = datetime(2026, 11, 29, 10, 42, tzinfo=UTC)
        assert intensity_at(at_ten, static=56, series=series) == 31
        assert (
            intensity_at(datetime(2026, 11, 29, 11, 5, tzinfo=UTC), static=56, series=series) == 45
        )
        assert (
            intensity_at(datetime(2026, 11, 29, 12, 0, tzinfo=UTC), static=56, series=series) == 56
        )

    def test_implausible_values_are_refused(self) -> None:
        with pytest.raises(ValueError):
            parse_series(["hour,g_per_kwh", "2026-11-29T10:00:00Z,-3"])

    def test_defaults_cover_the_eu(self) -> None:
        from souverain.core.jurisdictions import EU

        assert set(EU) <= set(DEFAULT_INTENSITY)
        assert DEFAULT_INTENSITY["FR"] < DEFAULT_INTENSITY["DE"] < DEFAULT_INTENSITY["PL"]


from souverain.energy.carbon import cleanest_start  # noqa: E402


class TestCleanestStart:
    def _series(self, start: datetime, values: list[float]) -> dict[datetime, float]:
        return {start + timedelta(hours=i): v for i, v in enumerate(values)}

    def test_defers_to_the_cleanest_window_that_still_meets_the_deadline(self) -> None:
        now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
        series = self._series(now, [300, 280, 250, 90, 60, 80, 300, 300])
        start, then, at_once = cleanest_start(
            series, now=now, deadline=now + timedelta(hours=8), duration_h=2, static=300
        )
        assert start == now + timedelta(hours=4)  # 60 then 80: the cleanest two hours
        assert then == 70 and at_once == 290

    def test_never_risks_the_deadline(self) -> None:
        now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
        series = self._series(now, [300, 300, 300, 300, 10, 10])
        start, _, _ = cleanest_start(
            series, now=now, deadline=now + timedelta(hours=5), duration_h=2, static=300
        )
        assert start + timedelta(hours=2 * 1.5) <= now + timedelta(hours=5)
        assert start < now + timedelta(hours=4)

    def test_without_a_series_it_starts_at_once(self) -> None:
        now = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
        start, then, at_once = cleanest_start(
            {}, now=now, deadline=now + timedelta(hours=24), duration_h=1, static=56
        )
        assert start == now and then == at_once == 56
