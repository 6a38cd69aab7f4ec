"""
Times and durations as Kubernetes writes them: RFC 3339 timestamps (a Lease's ``MicroTime``,
an Endpoints annotation's ``Time``, a certificate's ``notAfter`` as the beacon reports it) and
Go durations (``15s``, ``1m30s``, ``87600h``, the form of every KCM duration flag).

One parser each, so that the module, the runners and the states agree on what a time is.
Called as ``__utils__["kcm_time.parse_rfc3339"](value)`` from modules, states and runners;
the beacon, which the loader gives no ``__utils__``, reaches them through ``kcm.*``.
"""

import datetime
import re

__virtualname__ = "kcm_time"

_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def __virtual__():
    return __virtualname__


def parse_rfc3339(value, field="time"):
    """An RFC 3339 timestamp as an aware ``datetime``; ``None`` stays ``None``.

    Nanoseconds (Go writes up to nine digits) are cut to microseconds. Raises ``ValueError``
    naming ``field`` for anything else, including a time without a zone."""
    if value is None:
        return None
    match = _RFC3339.match(str(value))
    if not match:
        raise ValueError(f"{field}: {value!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    if zone in ("Z", "z"):
        tz = datetime.timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = datetime.timezone(sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)


def epoch(value):
    """Epoch seconds of an RFC 3339 timestamp, or ``None`` when ``value`` is not one.

    For data that may be absent or foreign (a minion's event, an annotation): the caller
    decides what a missing time means."""
    try:
        parsed = parse_rfc3339(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return parsed.timestamp() if parsed else None


def format_rfc3339(moment):
    """``moment`` (an aware ``datetime`` or epoch seconds) as UTC RFC 3339 with a ``Z``,
    to the second: the form Alertmanager and ``kubectl`` print."""
    if not isinstance(moment, datetime.datetime):
        moment = datetime.datetime.fromtimestamp(float(moment), datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_duration(text):
    """Whether ``text`` is a Go duration such as ``15s``, ``2m`` or ``1h30m``."""
    return isinstance(text, str) and bool(_DURATION.match(text.strip()))


def parse_duration(text):
    """A Go duration in seconds (a float). Raises ``ValueError`` for anything else; a bare
    number is not a duration (KCM refuses ``--leader-elect-lease-duration=15``)."""
    text = str(text).strip()
    if not _DURATION.match(text):
        raise ValueError(f"'{text}' is not a duration such as 15s, 2m or 87600h")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))
