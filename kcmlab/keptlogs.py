"""The logs of an e2e run that failed, or whose lab's leader moved with no test causing it,
copied out of pytest's base temp directory (which pytest removes three runs later, before
anyone has read why) into ``$KCM_CACHE/e2e-logs/<time>/<pid>/``; the last ten runs stay."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from kcmlab.rootfs import CACHE

HOME = CACHE / "e2e-logs"
RUNS = 10


def keep_logs(paths: Iterable[Path], home: Path = HOME, runs: int = RUNS) -> list[Path]:
    """Copy the files among ``paths`` into a new run directory under ``home``; return the copies."""
    run = home / time.strftime("%Y%m%dT%H%M%S") / str(os.getpid())
    kept = []
    for index, path in enumerate(paths):
        if not path.is_file():
            continue
        # Two labs write files of the same name (master.log): the lab's directory tells them apart.
        target = run / f"{index:03d}-{path.parent.name}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        kept.append(target)
    for old in sorted(home.glob("*/*"))[:-runs]:
        shutil.rmtree(old, ignore_errors=True)
    for stamp in home.glob("*"):
        if stamp.is_dir() and not any(stamp.iterdir()):
            stamp.rmdir()
    return kept
