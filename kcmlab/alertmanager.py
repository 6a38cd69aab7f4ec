"""Debian's prometheus-alertmanager on the host's loopback, for the alerts the formula sends.

One route to a receiver that sends nowhere: the caller reads the alerts back over the API.

    am = Alertmanager(workdir).start()
    am.active(alertname="KCMLeaderChanged", old_node="master-1")   # unresolved alerts
    am.stop()
"""

from __future__ import annotations

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
        self.daemon = Daemon("alertmanager", [
            BINARY, f"--config.file={config}", f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
        ], self.log_path, cwd=self.workdir)

    @property
    def pid(self) -> int | None:
        return self.daemon.pid

    def start(self, timeout: float = 30.0) -> Alertmanager:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump({
            "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
            "receivers": [{"name": "null"}],
        }))
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
