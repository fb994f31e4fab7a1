"""Progress lines for long jobs: done of total, rate and ETA, at most every `every` seconds.

A long job (generation, fine-tuning, SGLD chains, direction scoring) otherwise leaves
nothing in its log for many minutes. `Progress.update` is cheap to call every step; it
writes a line when `every` seconds have passed since the last one, and `finish` writes
the final count and rate.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("workflow_lib.core.progress")

EVERY_S = 30.0


class Progress:
    """Counts `unit`s done out of `total`, optionally a second count (e.g. tokens) for its rate."""

    def __init__(self, what: str, total: int, unit: str = "steps", *, rate_unit: str | None = None,
                 every: float | None = None, logger: logging.Logger | None = None):
        self.what, self.total, self.unit, self.rate_unit = what, int(total), unit, rate_unit
        self.every, self.log = EVERY_S if every is None else every, logger or log
        self.done = 0
        self.counted = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1, counted: int = 0) -> None:
        """`n` more units done; `counted` more of the rate unit (tokens, sequences) produced."""
        self.done += n
        self.counted += counted
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log.info("%s", self.line(now))

    def finish(self) -> None:
        self.log.info("%s (finished)", self.line(time.monotonic()))

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate_count = self.counted if self.rate_unit else self.done
        rate = f"{rate_count / elapsed:.1f} {self.rate_unit or self.unit}/s"
        remaining = self.total - self.done
        eta = f"ETA {remaining * elapsed / self.done:.0f} s" if self.done and remaining > 0 else "ETA 0 s"
        return f"{self.what}: {self.done}/{self.total} {self.unit} in {elapsed:.0f} s, {rate}, {eta}"


def counted(fn, progress: Progress):
    """`fn` that counts one unit of `progress` per call (e.g. a loss evaluation of an SGLD step)."""
    def call(*args, **kwargs):
        result = fn(*args, **kwargs)
        progress.update()
        return result
    return call


def sgld_evaluations(sampler: dict, epoch_batches: int, observable_batches: int = 0) -> int:
    """Loss evaluations devinterp's `sample` makes: per chain, the initial loss over `epoch_batches`
    batches, every burn-in step and every step between draws, and at each draw the observables'
    `observable_batches` batches."""
    draws = int(sampler["draws"])
    per_chain = (epoch_batches + int(sampler["burn_in"]) + draws * int(sampler["steps_between_draws"])
                 + draws * observable_batches)
    return int(sampler["chains"]) * per_chain
