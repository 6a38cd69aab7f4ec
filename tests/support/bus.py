"""A marker on a real salt-master's event bus, for "nothing (more) happened" checks.

Sleeping and then asserting that no event came passes when the event is late. Instead, a
test sends a marker event through the same master after everything it waits out, and
asserts once the marker is back: the master publishes in order, so an event published
before the marker was sent is on the listener before the marker is.
"""

from __future__ import annotations

import json
import time
import uuid


def bus_marker(master, event_listener, timeout: float = 60.0) -> float:
    """``salt-run event.send kcm/test/marker`` on ``master`` and wait until
    ``event_listener`` has it; returns the listener's stamp of the marker."""
    token = uuid.uuid4().hex
    since = time.time()
    ret = master.salt_run_cli(timeout=int(timeout)).run("event.send", "kcm/test/marker", f'data={{"token": "{token}"}}')
    assert ret.returncode == 0, ret
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in event_listener.get_events([(master.id, "kcm/test/marker")], after_time=since):
            if token in json.dumps(event.data, default=str):
                return event.stamp
        time.sleep(0.2)
    raise AssertionError(f"the marker event never came back through {master.id}'s bus in {timeout:.0f}s")
