"""Metric logging that never stalls the device: values are fetched one step late."""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

# Keys of a metrics.jsonl row that are bookkeeping, not curves.
NOT_CURVES = ("step", "skipped_steps", "wall_s")


class MetricsLog:
    """Averages per-step metrics over each interval and appends them to metrics.jsonl (each
    metric over the steps that reported it: a probe run only on logging steps is its value).

    `push(step, metrics)` takes step k's device metrics after step k+1 is dispatched, so the
    fetch of k overlaps k+1; it also bounds the steps in flight to two, which XLA:CPU's
    collectives need with many fake devices (docs/architecture.md: Traps).
    """

    def __init__(
        self,
        path: Path,
        every: int,
        *,
        extras: Callable[[int], dict[str, float]] | None = None,
        sink: Callable[[dict[str, Any]], None] | None = None,
    ):
        """`extras(step)` adds host-side values to each row (`Pace`); `sink(row)` receives
        each row after it is written (the TensorBoard log)."""
        self.path, self.every, self.extras, self.sink = path, every, extras, sink
        self._pending: tuple[int, dict[str, jax.Array]] | None = None
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._count = 0
        self._skipped = 0  # steps in this interval whose loss or gradient was NaN/inf
        self._nonfinite: list[int] = []
        self._start = time.perf_counter()
        self.last: dict[str, Any] = {}

    def push(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self._absorb()
        self._pending = (step, metrics)

    def resume_at(self, step: int) -> None:
        """Drop the rows after `step` (and a line cut short by a kill): a run resumed from the
        checkpoint of `step` logs those steps again, so each step appears once."""
        if jax.process_index() != 0 or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a process killed while writing it
            if row["step"] <= step:
                kept.append(line + "\n")
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(kept))
        partial.replace(self.path)

    def record(self, step: int, values: dict[str, Any]) -> None:
        """Step `step`'s metrics, already on the host: taken in now, after any pending step."""
        self.push(step, values)
        self._absorb()

    def flush(self) -> None:
        self._absorb()
        if self._count or self._skipped:
            self._write(self._last_step)

    def take_nonfinite(self) -> list[int]:
        """The steps fetched since the last call whose loss or gradient was NaN/inf (the
        train step reports them as `nonfinite` and leaves the state unchanged)."""
        steps, self._nonfinite = self._nonfinite, []
        return steps

    def _absorb(self) -> None:
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        if values.pop("nonfinite", 0.0):
            self._skipped += 1  # its NaN/inf values stay out of the averages
            self._nonfinite.append(step)
        else:
            for key, value in values.items():
                self._sums[key] = self._sums.get(key, 0.0) + value
                self._counts[key] = self._counts.get(key, 0) + 1
            self._count += 1
        self._last_step = step
        if step % self.every == 0:
            self._write(step)

    def _write(self, step: int) -> None:
        row = {k: v / self._counts[k] for k, v in self._sums.items()}
        if self.extras is not None:
            row.update(self.extras(step))
        row.update(
            step=step,
            skipped_steps=self._skipped,
            wall_s=round(time.perf_counter() - self._start, 3),
        )
        self.last = row
        if jax.process_index() == 0:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if self.sink is not None:
            self.sink(row)
        self._sums, self._counts, self._count, self._skipped = {}, {}, 0, 0


class Pace:
    """The `extras` of a run's rows: the learning rate at the row's step, and over the steps
    since the previous row the examples per second and the share of wall time the loop spent
    waiting for its next batch (`waited`)."""

    def __init__(self, batch_size: int, schedule: Callable[[int], Any], step: int):
        self.batch_size, self.schedule = batch_size, schedule
        self._step, self._since, self._wait = step, time.perf_counter(), 0.0

    def waited(self, seconds: float) -> None:
        self._wait += seconds

    def __call__(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        span = max(now - self._since, 1e-9)
        values = {
            "learning_rate": float(self.schedule(step - 1)),  # step k applies update k - 1
            "examples_per_s": (step - self._step) * self.batch_size / span,
            "data_wait_fraction": self._wait / span,
        }
        self._step, self._since, self._wait = step, now, 0.0
        return values


class CopiesMetricsLog:
    """A MetricsLog per copy of a sweep, fed from the vmapped step's metrics {key: [S]},
    fetched one step late (one transfer for all copies) as MetricsLog does."""

    def __init__(self, paths: list[Path], every: int):
        self.logs = [MetricsLog(path, every) for path in paths]
        self._pending: tuple[int, dict[str, jax.Array]] | None = None

    def push(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self._absorb()
        self._pending = (step, metrics)

    def flush(self) -> None:
        self._absorb()
        for log in self.logs:
            log.flush()

    def resume_at(self, step: int) -> None:
        for log in self.logs:
            log.resume_at(step)

    def take_nonfinite(self) -> list[list[int]]:
        """Per copy, the steps fetched since the last call whose loss or gradient was NaN/inf."""
        return [log.take_nonfinite() for log in self.logs]

    def _absorb(self) -> None:
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        values = jax.device_get(metrics)
        for i, log in enumerate(self.logs):
            log.record(step, {key: value[i] for key, value in values.items()})
