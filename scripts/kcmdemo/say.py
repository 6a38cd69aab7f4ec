"""The demo's output: short progress lines with the time since the command started; the
detail (every command, each master's own line, whole events and alerts) only with ``--verbose``."""

from __future__ import annotations

import time

from kcmdemo import TOTAL_STEPS


class Say:
    """Short progress lines with the time since the command started."""

    def __init__(self):
        self.begin = time.monotonic()
        self.step_begin = self.begin
        # --verbose: the lines and blocks marked ``detail`` are printed too.
        self.verbose = False

    def elapsed(self) -> float:
        return time.monotonic() - self.begin

    def step(self, number, text: str) -> None:
        self.step_begin = time.monotonic()
        print(f"\n\033[1m==> [{number}/{TOTAL_STEPS}] {text}\033[0m  (t={self.elapsed():.1f}s)", flush=True)

    def line(self, text: str, detail: bool = False) -> None:
        if self.verbose or not detail:
            print(f"    {text}", flush=True)

    def done(self, text: str) -> None:
        print(f"    ok: {text} ({time.monotonic() - self.step_begin:.1f}s)", flush=True)

    def block(self, text: str, indent: str = "    | ", detail: bool = False) -> None:
        if self.verbose or not detail:
            for row in text.rstrip("\n").splitlines():
                print(indent + row, flush=True)


say = Say()
