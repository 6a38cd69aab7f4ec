"""A real `salt-call --local` minion in a private sandbox, with the repo's formula as its
file_roots: how the demo, the tests and the benchmarks lay the formula down without root
paths, and how they render ``kcm.master`` for the salt-master on this host."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SALT_CALL = Path(sys.executable).with_name("salt-call")


class SaltCallError(RuntimeError):
    pass


class MasterlessMinion:
    def __init__(self, root, minion_id, pillar, extra_config=None):
        self.root = Path(root)
        self.id = minion_id
        self.config_dir = self.root / "conf"
        self.salt_root = self.root / "salt"
        self.pillar_dir = self.root / "pillar"
        self.cachedir = self.salt_root / "var/cache/salt/minion"
        self.log_path = self.salt_root / "minion.log"
        for d in (self.config_dir, self.salt_root, self.pillar_dir):
            d.mkdir(parents=True, exist_ok=True)
        config = {
            "id": minion_id,
            "root_dir": str(self.salt_root),
            "file_client": "local",
            "file_roots": {"base": [str(REPO / "formula")]},
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "fileserver_list_cache_time": 0,
            # inside root_dir: Salt prefixes root_dir to a log path outside it
            "log_file": str(self.log_path),
            "log_level_logfile": "info",
            "features": {"x509_v2": True},
            "state_output_diff": True,
        }
        config.update(extra_config or {})
        (self.config_dir / "minion").write_text(yaml.safe_dump(config))
        (self.pillar_dir / "top.sls").write_text("base:\n  '*':\n    - kcm\n")
        self.set_pillar(pillar)
        self.call("saltutil.sync_all", check=True)

    def set_pillar(self, pillar):
        self.pillar = pillar
        path = self.pillar_dir / "kcm.sls"
        path.write_text(json.dumps(pillar))
        path.chmod(0o600)

    def run(self, *args, timeout=300):
        cmd = [
            str(SALT_CALL),
            "--local",
            f"--config-dir={self.config_dir}",
            "--out=json",
            "--log-level=quiet",
            "--retcode-passthrough",
            *args,
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )

    def call(self, fun, *args, check=False, timeout=300, **kwargs):
        argv = [fun, *[str(a) for a in args]]
        argv += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in kwargs.items()]
        proc = self.run(*argv, timeout=timeout)
        try:
            data = json.loads(proc.stdout)["local"] if proc.stdout.strip() else None
        except ValueError:
            data = proc.stdout
        if check and proc.returncode != 0:
            raise SaltCallError(
                f"salt-call {fun} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        return proc.returncode, data

    def apply(self, sls="kcm", **kwargs):
        """Run state.apply; return the state return dict (state id -> result)."""
        _, data = self.call("state.apply", sls, **kwargs)
        return data

    @property
    def deployed(self):
        path = self.cachedir / "kcm" / "deployed.json"
        return json.loads(path.read_text()) if path.exists() else {}


def kcm_master_config(root, master: dict) -> dict:
    """The master config ``kcm.master`` writes (its ``kcm.conf``) for pillar ``kcm:master`` =
    ``master``, rendered by the real state with ``salt-call --local`` under ``root``; to pass
    to a salt-master (``SaltMaster(config=...)``) before it starts, so no restart is needed.
    The runners are synced by whoever starts the master (``sync_runners`` off here)."""
    root = Path(root)
    conf_dir = root / "master.d"
    pillar = {"kcm": {"master": {**master, "config_dir": str(conf_dir), "sync_runners": False}}}
    ret = MasterlessMinion(root, "salt-master-host", pillar).apply("kcm.master")
    from kcmlab.cluster import failed_states

    failed = failed_states(ret)
    if failed:
        raise SaltCallError("salt-call --local state.apply kcm.master failed:\n" + "\n".join(failed))
    return yaml.safe_load((conf_dir / "kcm.conf").read_text())
