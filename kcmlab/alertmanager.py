"""Debian's prometheus-alertmanager on the host's loopback, for the alerts the formula sends.

One route to a receiver that sends nowhere: the caller reads the alerts back over the API.

    am = Alertmanager(workdir).start()
    am.active(alertname="KCMLeaderChanged", old_node="master-1")   # unresolved alerts
    am.stop()
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests
import yaml

from kcmlab.controlplane import Daemon, free_port, wait_until

BINARY = Path("/usr/bin/prometheus-alertmanager")


def active_alerts(url: str, timeout: float = 5.0, **labels) -> list[dict]:
    """Unresolved alerts of the Alertmanager at ``url`` whose labels match ``labels``."""
    filters = [("filter", f'{key}="{value}"') for key, value in labels.items()]
    with requests.Session() as session:
        session.trust_env = False  # loopback never goes through a proxy
        reply = session.get(f"{url}/api/v2/alerts", params=filters, timeout=timeout)
    reply.raise_for_status()
    return reply.json()


class Alertmanager:
    """One Alertmanager process (its own session) with its data, config and log in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None):
        if not BINARY.exists():
            raise FileNotFoundError(f"{BINARY} is missing: apt-get install prometheus-alertmanager")
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "alertmanager.log"
        config = self.workdir / "alertmanager.yml"
        self.daemon = Daemon(
            "alertmanager",
            [
                BINARY,
                f"--config.file={config}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            self.log_path,
            cwd=self.workdir,
        )

    @property
    def pid(self) -> int | None:
        return self.daemon.pid

    def start(self, timeout: float = 30.0) -> Alertmanager:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "alertmanager.yml").write_text(
            yaml.safe_dump(
                {
                    "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
                    "receivers": [{"name": "null"}],
                }
            )
        )
        self.daemon.start()

        def ready():
            try:
                with requests.Session() as session:
                    session.trust_env = False
                    return session.get(f"{self.url}/-/ready", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout, f"alertmanager {self.url}/-/ready", alive=self.daemon.check_alive)
        return self

    def stop(self) -> None:
        self.daemon.stop()

    def active(self, **labels) -> list[dict]:
        """Unresolved alerts whose labels match ``labels``."""
        return active_alerts(self.url, **labels)


class AlertWatch:
    """Every alert Alertmanager lists while the watch runs, polled every ``interval`` seconds
    (an Alertmanager that is down is simply not polled)."""

    def __init__(self, url: str, interval: float = 0.3):
        self.url = url
        self.interval = interval
        self.seen: dict[tuple[str, str], dict] = {}
        self.last_poll: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-watch", daemon=True)

    def poll(self, session=None) -> None:
        """One poll now (an Alertmanager that does not answer is simply not polled)."""
        try:
            reply = (session or requests).get(
                f"{self.url}/api/v2/alerts",
                timeout=2,
                **({} if session else {"proxies": {"http": None, "https": None}}),
            )
            reply.raise_for_status()
            listed = reply.json()
        except (requests.RequestException, ValueError):
            return
        self._record(listed, time.time())

    def _run(self) -> None:
        with requests.Session() as session:
            session.trust_env = False
            while not self._stop.is_set():
                self.poll(session)
                self._stop.wait(self.interval)

    def _record(self, listed: list[dict], now: float) -> None:
        with self._lock:
            for alert in listed:
                key = (alert["fingerprint"], alert["startsAt"])
                entry = self.seen.setdefault(key, {"labels": alert["labels"], "first": now})
                entry["last"] = now
            self.last_poll = now

    def start(self) -> AlertWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def alerts(self, alertname: str | None = None, window=(0.0, float("inf")), **labels) -> list[dict]:
        """Each alert first seen within ``window`` (epoch seconds): labels, first/last seen,
        ``open`` (listed at the latest poll)."""
        wanted = dict(labels, **({"alertname": alertname} if alertname else {}))
        with self._lock:
            return [
                dict(entry, open=entry["last"] == self.last_poll)
                for entry in self.seen.values()
                if window[0] <= entry["first"] < window[1]
                and all(entry["labels"].get(k) == v for k, v in wanted.items())
            ]

    def open(self, alertname: str | None = None, **labels) -> list[dict]:
        return [a for a in self.alerts(alertname, **labels) if a["open"]]

    def counts(self, window=(0.0, float("inf"))) -> tuple[int, int]:
        """(fired, resolved): the alerts seen, and those of them no longer listed."""
        alerts = self.alerts(window=window)
        return len(alerts), sum(1 for a in alerts if not a["open"])

    def by_name(self, window=(0.0, float("inf"))) -> dict[str, int]:
        names = [a["labels"].get("alertname") for a in self.alerts(window=window)]
        return {name: names.count(name) for name in set(names)}

    def wait_closed(self, names, timeout: float = 180.0) -> None:
        """Until no alert of ``names`` is open (two fresh polls in a row agree)."""

        def closed():
            polled = self.last_poll
            time.sleep(2 * self.interval)
            return self.last_poll != polled and not [a for n in names for a in self.open(n)]

        wait_until(closed, timeout, f"no open alert of {', '.join(names)} in Alertmanager", interval=0.5)
