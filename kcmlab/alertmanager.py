"""Debian's ``prometheus-alertmanager`` on 127.0.0.1, for the alerts the salt-master's
``kcm_alert`` runner sends (the runner runs on the host, so loopback is where it posts).

    with Alertmanager(workdir) as am:
        am.active(alertname="KCMLeaderChanged")     # unresolved alerts with these labels
"""

from __future__ import annotations

from pathlib import Path

import requests
import yaml

from kcmlab.controlplane import Daemon, free_port, wait_until

BINARY = Path("/usr/bin/prometheus-alertmanager")


class Alertmanager:
    """One Alertmanager (no cluster peers, a null receiver, 1 s grouping)."""

    def __init__(self, workdir: Path, binary: Path = BINARY):
        if not Path(binary).exists():
            raise FileNotFoundError(f"{binary} is missing: apt-get install prometheus-alertmanager")
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.workdir / "alertmanager.yml"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump({
            "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
            "receivers": [{"name": "null"}],
        }))
        self.daemon = Daemon("alertmanager", [
            binary, f"--config.file={config}", f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            self.workdir / "alertmanager.log")
        self.session = requests.Session()
        self.session.trust_env = False  # a proxy from the environment must not see loopback calls

    @property
    def log_path(self) -> Path:
        return self.daemon.log_path

    def start(self, timeout: float = 30.0) -> Alertmanager:
        self.daemon.start()

        def ready():
            try:
                return self.session.get(self.url + "/-/ready", timeout=2).ok
            except requests.RequestException:
                return False

        wait_until(ready, timeout, "alertmanager /-/ready", alive=self.daemon.check_alive)
        return self

    def stop(self) -> None:
        self.daemon.stop()

    def __enter__(self) -> Alertmanager:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def active(self, **labels) -> list[dict]:
        """Unresolved alerts whose labels equal ``labels``."""
        filters = [("filter", f'{key}="{value}"') for key, value in labels.items()]
        reply = self.session.get(self.url + "/api/v2/alerts", params=filters, timeout=5)
        reply.raise_for_status()
        return reply.json()
