"""The benchmark harness: a run context that sizes the work, times jitted programs and writes
one JSON line per measurement.

Every record carries the run's environment (device kind and count, dtype, mesh, jax version,
git revision, thread count, load average) so that a line read alone says what it measured.
"""

import dataclasses
import datetime
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from mmjax import perf

SUITES = ("extract", "fused", "train", "pipeline", "checkpoint", "peer")


def _git_revision() -> str:
    """HEAD's short hash, with "+dirty" when tracked files differ from it."""
    root = str(Path(__file__).resolve().parents[1])

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def device_slug() -> str:
    """A file-name form of the default device: 'cpu', 'nvidia-h200', 'tpu-v5-lite', ..."""
    device = jax.devices()[0]
    kind = "cpu" if device.platform == "cpu" else device.device_kind
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")


@dataclasses.dataclass
class Context:
    """One benchmark run: its size (`smoke` or full), where it writes, what it recorded."""

    smoke: bool
    out_dir: Path
    run_id: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    )
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    _peaks: dict[str, tuple[float | None, str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        device = jax.devices()[0]
        date = datetime.date.today().isoformat()
        # Smoke runs go to their own file, so they never mix with real measurements.
        stem = f"{device_slug()}-{date}" + ("-smoke" if self.smoke else "")
        self.results_path = self.out_dir / f"{stem}.jsonl"
        self.environment = {
            "run_id": self.run_id,
            "smoke": self.smoke,
            "platform": device.platform,
            "device_kind": device.device_kind,
            "device_count": jax.device_count(),
            "process_count": jax.process_count(),
            "cpu_count": os.cpu_count(),
            "jax_version": jax.__version__,
            "git_revision": _git_revision(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }

    @property
    def accelerator(self) -> bool:
        return jax.devices()[0].platform != "cpu"

    def peak(self, dtype: str) -> tuple[float | None, str]:
        """(peak FLOP/s of one device, where it came from): the data-sheet table on GPU/TPU;
        on CPU the best n=2048 matmul measured in this run (once per dtype)."""
        if dtype not in self._peaks:
            kind = jax.devices()[0].device_kind
            if self.accelerator:
                self._peaks[dtype] = (perf.table_peak(kind, dtype), f"table:{kind}")
            else:
                n = 512 if self.smoke else 2048
                value = perf.matmul_peak(dtype, n=n, iters=3 if self.smoke else 10)
                self._peaks[dtype] = (value, f"measured:matmul{n}")
                self.record(
                    "peak", model="matmul", variant=f"{n}^3", dtype=dtype, flops_per_s=value
                )
        return self._peaks[dtype]

    def iterations(self, first_call_s: float) -> int:
        """Timed calls for a program whose first steady call took `first_call_s`: about 2 s
        of timing in a full run (at least 10 calls, at most 200), 3 calls in a smoke run."""
        if self.smoke:
            return 3
        return int(min(200, max(10, math.ceil(2.0 / max(first_call_s, 1e-6)))))

    def record(self, suite: str, **fields: Any) -> dict[str, Any]:
        """Append one measurement (with the environment) to the run and to the JSONL file."""
        line = {"suite": suite, **fields, **self.environment, "loadavg": os.getloadavg()[0]}
        line["time"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.records.append(line)
        with self.results_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        return line


def timed(
    ctx: Context,
    jitted: Any,
    args: tuple,
    *,
    batch: int,
    dtype: str = "float32",
    devices: int = 1,
    carry: bool = False,
) -> dict[str, Any]:
    """Count the model FLOPs of `jitted(*args)`, compile and time it on `devices`: the
    timing fields of a record (see `_fields`). `carry` as in `_time_program`."""
    flops = perf.matmul_flops(jitted, *args)  # traced before a carried state is donated
    compiled, stats = _time_program(ctx, jitted, args, carry=carry)
    return _fields(
        ctx, compiled=compiled, stats=stats, flops=flops, batch=batch, dtype=dtype, devices=devices
    )


def _time_program(
    ctx: Context, jitted: Any, args: tuple, *, carry: bool = False
) -> tuple[perf.Compiled, perf.Stats]:
    """Compile `jitted` for `args` (timed), then time steady-state calls. With `carry`, the
    program returns (new args[0], output) and each call feeds the new state back in (a train
    step whose state is donated)."""
    compiled = perf.compile_timed(jitted, *args)
    state = [args[0]]

    def call() -> Any:
        if not carry:
            return compiled.executable(*args)
        state[0], out = compiled.executable(state[0], *args[1:])
        return out

    started = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - started
    return compiled, perf.measure(call, warmup=1, iters=ctx.iterations(first))


def _fields(
    ctx: Context,
    *,
    compiled: perf.Compiled,
    stats: perf.Stats,
    flops: perf.FlopCount,
    batch: int,
    dtype: str,
    devices: int,
) -> dict[str, Any]:
    """The timing fields of a record: compile time, step time percentiles, samples/s, model
    FLOPs (analytic and XLA's, with their ratio), achieved FLOP/s and MFU on `devices`."""
    peak, peak_source = ctx.peak(dtype)
    if peak and ctx.accelerator:  # a CPU's measured peak already covers all its cores
        peak *= devices
    step_s = stats.median
    # cost_analysis() describes one device's partition of an SPMD program: scale it up.
    xla_total = compiled.xla_flops * devices if compiled.xla_flops else None
    xla_ratio = xla_total / flops.flops if xla_total and flops.flops else None
    return {
        "lower_s": compiled.lower_s,
        "compile_s": compiled.compile_s,
        **stats.summary(),
        "samples_per_s": batch / step_s,
        "flops": flops.flops,
        "flops_exact": flops.exact,
        "xla_flops": xla_total,
        "xla_over_analytic": xla_ratio,
        "xla_flops_mismatch": xla_ratio is not None and not 0.9 <= xla_ratio <= 1.1,
        "achieved_flops": flops.flops / step_s,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu": perf.mfu(flops.flops, step_s, peak),
    }


def run(suites: list[str], ctx: Context, log: Callable[[str], None] = print) -> list[dict]:
    """Run `suites` (names from SUITES) in order; returns every record written."""
    import importlib

    for name in suites:
        module = importlib.import_module(f"benchmarks.suite_{name}")
        started = time.perf_counter()
        before = len(ctx.records)
        module.run(ctx)
        log(
            f"{name}: {len(ctx.records) - before} measurements in "
            f"{time.perf_counter() - started:.1f} s"
        )
    return ctx.records
