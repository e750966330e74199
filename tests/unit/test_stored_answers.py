"""How a batched answer is stored for other worker processes, and read back.

Range series travel as columns (labels, times, values) and become (time, value)
pairs only for the series a rollout picks; whatever is stored is checked before it
is trusted, and anything else reads as "not a stored answer" (the caller then asks
Prometheus itself).
"""

from __future__ import annotations

import json
import math
import zlib
from datetime import UTC, datetime

import pytest

from controller.analysis.answer_cache import (
    CachedAnswer,
    StoredSeries,
    as_series,
    decode,
    encode,
)
from controller.analysis.batching import BatchedQuery, SharedAnswer
from controller.metrics.prometheus import Sample, Series

AT = datetime(2026, 1, 1, tzinfo=UTC)
LONG_AGO = AT.isoformat()


def _stored(document: object) -> bytes:
    return zlib.compress(json.dumps(document).encode())


def _series_document(times: object, values: object) -> bytes:
    return _stored({"at": LONG_AGO, "samples": [], "series": [[{"service": "a"}, times, values]]})


def test_an_answer_round_trips_through_its_encoding() -> None:
    points = [(1.0, 2.0), (3.0, math.nan), (5.0, math.inf), (7.0, -math.inf), (9.0, 0.5)]
    answer = CachedAnswer(
        AT,
        [Sample({"service": "a"}, -math.inf)],
        [Series({"service": "a", "track": "canary"}, points), Series({"service": "b"}, [])],
    )
    back = decode(encode(answer))
    assert back.evaluated_at == answer.evaluated_at and back.samples == answer.samples
    first, second = (as_series(item) for item in back.series)
    assert first.labels == {"service": "a", "track": "canary"}
    assert [t for t, _ in first.points] == [1.0, 3.0, 5.0, 7.0, 9.0]
    values = [v for _, v in first.points]
    assert values[0] == 2.0 and math.isnan(values[1]) and values[2:] == [math.inf, -math.inf, 0.5]
    assert second == Series({"service": "b"}, [])


def test_a_read_answer_is_encoded_again_as_it_was_asked() -> None:
    asked = CachedAnswer(AT, [], [Series({"service": "a"}, [(1.0, 2.5), (2.0, 3.5)])])
    read = decode(encode(asked))
    assert isinstance(read.series[0], StoredSeries)
    assert [as_series(s) for s in decode(encode(read)).series] == list(asked.series)


def test_whole_numbers_read_as_doubles() -> None:
    (stored,) = decode(_series_document([1, 2], [0, 7])).series
    assert as_series(stored).points == [(1.0, 0.0), (2.0, 7.0)]
    assert all(type(n) is float for point in as_series(stored).points for n in point)


@pytest.mark.parametrize(
    ("times", "values"),
    [
        ([1.0, 2.0], [1.0]),  # columns of different lengths
        ([1.0], ["nan"]),  # only Prometheus's own words stand for NaN
        ([1.0], [None]),
        ([1.0], [[1.0]]),
        (["+Inf"], "1.0"),  # a column that is not a list
        ({"1": 1.0}, [1.0]),
    ],
    ids=["lengths", "lowercase-nan", "null", "nested", "not-a-list", "a-map"],
)
def test_a_bad_column_is_not_a_stored_answer(times: object, values: object) -> None:
    with pytest.raises(ValueError, match="not a stored answer"):
        decode(_series_document(times, values))


def test_a_row_without_its_three_parts_is_not_a_stored_answer() -> None:
    document = {"at": LONG_AGO, "samples": [], "series": [[{"service": "a"}, [1.0, 2.0]]]}
    with pytest.raises(ValueError, match="not a stored answer"):
        decode(_stored(document))


@pytest.mark.parametrize("value", ["1.5", "nan", "Infinity", None, [1]])
def test_a_stored_value_is_a_number_or_prometheus_words_for_the_others(value: object) -> None:
    with pytest.raises(ValueError, match="not a stored answer"):
        decode(_stored({"at": LONG_AGO, "samples": [[{"service": "a"}, value]], "series": []}))
    assert decode(_stored({"at": LONG_AGO, "samples": [[{"service": "a"}, "+Inf"]], "series": []}))


def test_a_rollout_picks_its_own_series_as_pairs_from_a_read_answer() -> None:
    asked = [
        Series({"service": name, "track": track}, [(1.0, index), (2.0, index + 0.5)])
        for index, (name, track) in enumerate(
            [("a", "canary"), ("a", "stable"), ("b", "canary"), ("b", "stable")]
        )
    ]
    read = decode(encode(CachedAnswer(AT, [], asked)))
    answer = SharedAnswer(read.evaluated_at, read.samples, read.series)
    mine = BatchedQuery("q", (("service", "b"),))
    assert answer.picked_series(mine) == asked[2:]
    assert all(type(s) is Series for s in answer.picked_series(mine))
    canary_a = BatchedQuery("q", (("service", "a"), ("track", "canary")))
    assert answer.picked_series(canary_a) == [asked[0]]
    assert answer.picked_series(BatchedQuery("q", (("service", "c"),))) == []
