"""Grid carbon intensity: the datacenter's hourly series where one is loaded, else its
static value. Default static values per country ship in `DEFAULT_INTENSITY`."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

# Approximate annual carbon intensity of electricity generation, gCO2e/kWh, rounded to
# the nearest 10 g (France and the Nordics to the nearest gram). Compiled from Ember's
# yearly electricity data for 2023 (ember-energy.org, "Yearly electricity data", CO2
# intensity of generation). Life-cycle figures are higher, and grids change every year:
# operators should set each datacenter's own value, or load an hourly series from their
# grid operator (RTE eCO2mix, ENTSO-E, Electricity Maps) with
# `souverain datacenters carbon load`.
DEFAULT_INTENSITY_SOURCE = "Ember, Yearly electricity data 2023 (generation CO2 intensity), rounded"
DEFAULT_INTENSITY: dict[str, float] = {
    "AT": 100, "BE": 130, "BG": 360, "HR": 200, "CY": 610, "CZ": 430, "DK": 130, "EE": 420,
    "FI": 80, "FR": 56, "DE": 380, "GR": 340, "HU": 200, "IE": 280, "IT": 330, "LV": 120,
    "LT": 160, "LU": 70, "MT": 400, "NL": 270, "PL": 660, "PT": 140, "RO": 240, "SK": 110,
    "SI": 230, "ES": 150, "SE": 41, "NO": 30, "IS": 28, "CH": 40,
}  # fmt: skip


def default_for(country: str) -> float | None:
    return DEFAULT_INTENSITY.get(country.upper())


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def intensity_at(moment: datetime, *, static: float, series: Mapping[datetime, float]) -> float:
    """The series value for the hour containing `moment`, else the static value."""
    return series.get(hour_of(moment), static)


def parse_series(lines: Iterable[str]) -> dict[datetime, float]:
    """CSV with a header `hour,g_per_kwh`; hours in ISO 8601 (UTC when no offset is given)."""
    series: dict[datetime, float] = {}
    for row in csv.DictReader(lines):
        moment = datetime.fromisoformat(row["hour"].strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = float(row["g_per_kwh"])
        if not 0 <= value <= 5000:
            raise ValueError(f"implausible intensity {value} at {row['hour']}")
        series[hour_of(moment)] = value
    return series


def cleanest_start(
    series: Mapping[datetime, float],
    *,
    now: datetime,
    deadline: datetime,
    duration_h: float,
    static: float,
    margin: float = 1.5,
) -> tuple[datetime, float, float]:
    """When to start work of `duration_h` hours so that it runs on the cleanest grid and
    still ends before `deadline` with `margin` × its duration to spare: the whole hour
    (from now on) whose window of `duration_h` has the lowest mean intensity. Returns
    (start, mean intensity then, mean intensity if started now). Hours without a value in
    the series count at `static`. Starting now is chosen unless later is strictly cleaner."""
    hours = max(1, math.ceil(duration_h))
    latest = deadline - timedelta(hours=duration_h * margin)

    def mean_from(start: datetime) -> float:
        return (
            sum(
                intensity_at(start + timedelta(hours=h), static=static, series=series)
                for h in range(hours)
            )
            / hours
        )

    at_once = mean_from(now)
    best, best_mean = now, at_once
    candidate = hour_of(now) + timedelta(hours=1)
    while candidate <= latest:
        mean = mean_from(candidate)
        if mean < best_mean:
            best, best_mean = candidate, mean
        candidate += timedelta(hours=1)
    return best, best_mean, at_once
