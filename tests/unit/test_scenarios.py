"""The detection benchmark's scenario library: what each history contains."""

from __future__ import annotations

from collections import Counter

from controller.lab.scenarios import DURATION_S, STEP_S, library, openmetrics


def _lines(name: str) -> list[str]:
    scenario = next(s for s in library() if s.name == name)
    return [line for line in openmetrics([scenario], 10_000_000).splitlines() if "{" in line]


def test_every_criterion_at_three_magnitudes_and_healthy_and_broken_data() -> None:
    scenarios = library()
    assert len(scenarios) >= 24
    assert len({s.name for s in scenarios}) == len(scenarios)
    faulty = Counter(s.family for s in scenarios if s.faulty)
    assert all(faulty[family] >= 3 for family in ("5xx", "auth", "lag", "writes", "latency"))
    assert {s.expect for s in scenarios} == {"rollback", "continue", "hold"}


def test_series_are_sampled_like_a_scrape_and_the_document_ends_as_openmetrics() -> None:
    document = openmetrics(library()[:1], 10_000_000)
    assert document.endswith("# EOF\n")
    writes = [line for line in document.splitlines() if line.startswith("demo_writes_total")]
    assert len(writes) == 2 * (DURATION_S // STEP_S + 1)  # stable and canary


def test_lazy_error_series_appear_only_with_an_error() -> None:
    lines = _lines("healthy-lazy-error-series")
    assert not [line for line in lines if 'code="500"' in line or 'result="failure"' in line]
    assert [line for line in lines if 'code="200"' in line]


def test_an_absent_canary_exposes_nothing_and_a_reset_counter_drops() -> None:
    assert not [line for line in _lines("canary-absent") if 'version="2.0.0"' in line]
    counts = [
        float(line.split()[1])
        for line in _lines("healthy-counter-reset")
        if line.startswith("demo_writes_total") and 'version="2.0.0"' in line
    ]
    assert any(later < earlier for earlier, later in zip(counts, counts[1:], strict=False))
