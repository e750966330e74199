from datetime import timedelta

import pytest

from controller.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        (" 2h ", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
    ],
)
def test_parses_durations_people_write(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30", "m", "5x", "", "5m3", "-5m", "1.5.2s"])
def test_refuses_ambiguous_or_broken_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [30, 1.5, None, True])
def test_refuses_bare_numbers(value: object) -> None:
    with pytest.raises(ValueError, match="like '30m'"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1, seconds=5), "1h5s"),
        (timedelta(0), "0s"),
        (timedelta(milliseconds=250), "250ms"),
    ],
)
def test_formats_for_promql_and_humans(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value
