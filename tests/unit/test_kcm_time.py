"""kcm_time: the one reader of RFC 3339 times and Go durations (the beacon reads the deployed
lease timings through it)."""

import datetime

import pytest

from kcmlab import formula

UTILS = formula.utils()


@pytest.mark.parametrize("text, seconds", [("2s", 2.0), ("1m30s", 90.0), ("500ms", 0.5), ("15s", 15.0), ("1h", 3600.0)])
def test_durations_as_kcm_flags_write_them(text, seconds):
    assert UTILS["kcm_time.parse_duration"](text) == seconds


@pytest.mark.parametrize("text", ["bogus", "", "15", "2 s"])
def test_anything_else_is_not_a_duration(text):
    with pytest.raises(ValueError, match="is not a duration"):
        UTILS["kcm_time.parse_duration"](text)


def test_lease_times_to_the_microsecond_and_none_for_what_is_not_one():
    assert UTILS["kcm_time.parse_rfc3339"]("2026-11-26T18:40:00.123456789Z") == datetime.datetime(
        2026, 11, 26, 18, 40, 0, 123456, tzinfo=datetime.timezone.utc
    )
    assert UTILS["kcm_time.epoch"]("2026-11-26T18:40:00Z") == 1795718400.0
    assert UTILS["kcm_time.epoch"]("2026-11-26 18:40:00") is None and UTILS["kcm_time.epoch"](None) is None
