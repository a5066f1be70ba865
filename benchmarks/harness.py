"""The benchmark harness: a run context that sizes the work, times jitted programs and writes
one JSON line per measurement; and the dry run, which lists what each suite will measure.

Every record carries the run's environment (device kind and count, dtype, mesh, jax version,
git revision, thread count, load average) so that a line read alone says what it measured.
Each line is appended with one write as soon as it is measured, so a run killed at any moment
keeps every finished measurement (`benchmarks/report.py` renders the file afterwards).

Each suite module has `run(ctx)` and `plan(ctx)`: the measurements `run` will record, built
from the same case lists, as `Planned` rows. `run` below checks that a suite recorded exactly
what its plan listed; `dry_run` prints the plans with a time estimate per measurement, taken
from earlier records of the same measurement on the same kind of device.
"""

import collections
import dataclasses
import datetime
import importlib
import json
import math
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax

from benchmarks import report
from mmjax import perf
from mmjax.errors import MmjaxError

SUITES = ("extract", "fused", "train", "pipeline", "checkpoint", "peer")
RESULTS = Path(__file__).resolve().parent / "results"
"""The committed results; the dry run reads its estimates from here and from the output folder."""
STARTUP_S = 15.0
"""A suite's fixed cost in the estimate: its process, imports and the backend's start."""
GUESS_S = {True: 3.0, False: 20.0}
"""Estimated seconds of a measurement no earlier run recorded on this device: smoke, full."""


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
        """Append one measurement (with the environment) to the run and to the JSONL file, in
        one write of the whole line, so that a kill leaves whole lines only."""
        line = {"suite": suite, **fields, **self.environment, "loadavg": os.getloadavg()[0]}
        line["time"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.records.append(line)
        data = (json.dumps(line) + "\n").encode()
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"{self.results_path}: wrote {written} of {len(data)} bytes")
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


@dataclasses.dataclass(frozen=True)
class Planned:
    """One measurement a suite will record: the fields that name its record, and a note on
    what else sets it apart (input shapes, mesh, workers) for the dry run's listing."""

    suite: str
    model: str
    variant: str
    batch: int
    dtype: str = "float32"
    note: str = ""

    @property
    def key(self) -> tuple[str, ...]:
        return record_key(dataclasses.asdict(self))


def record_key(record: Mapping[str, Any]) -> tuple[str, ...]:
    """What names a measurement: (suite, model, variant, batch, dtype), as strings."""
    return tuple(str(record.get(k)) for k in ("suite", "model", "variant", "batch", "dtype"))


def suite_module(name: str) -> Any:
    """The module `benchmarks.suite_<name>` (a ValueError for a name not in SUITES)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
    return importlib.import_module(f"benchmarks.suite_{name}")


def run(suites: list[str], ctx: Context, log: Callable[[str], None] = print) -> list[dict]:
    """Run `suites` (names from SUITES) in order; returns every record written. A suite that
    records other measurements than its `plan(ctx)` lists raises a RuntimeError after it ran
    (its records are kept), so the dry run cannot drift from what the suites measure."""
    for name in suites:
        module = suite_module(name)
        planned = collections.Counter(p.key for p in module.plan(ctx))
        started = time.perf_counter()
        before = len(ctx.records)
        module.run(ctx)
        made = [r for r in ctx.records[before:] if r["suite"] == name]
        log(f"{name}: {len(made)} measurements in {time.perf_counter() - started:.1f} s")
        recorded = collections.Counter(record_key(r) for r in made)
        if recorded != planned:
            raise RuntimeError(
                f"benchmarks/suite_{name}.py recorded what its plan() does not list: "
                f"{sorted((recorded - planned).elements())}; planned, not recorded: "
                f"{sorted((planned - recorded).elements())}"
            )
    return ctx.records


def _record_seconds(record: Mapping[str, Any]) -> float | None:
    """What a record's own fields say its measurement took: lowering, compilation and the
    timed calls with two warm-ups (None for records without those fields)."""
    fields = ("lower_s", "compile_s", "step_ms_p50", "iters")
    if any(not isinstance(record.get(f), int | float) for f in fields):
        return None
    calls = record["iters"] + 2
    return record["lower_s"] + record["compile_s"] + calls * record["step_ms_p50"] / 1000


def durations(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, ...], float]:
    """Seconds each measurement took in the newest run that recorded it, by `record_key`: the
    time since the previous record of its run (which covers building the model too), or, for
    a run's first record, what its own fields say; the median where a run repeats a key.
    The CPU's peak records are left out: they are written in the middle of a measurement."""
    runs: dict[str, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for record in records:
        if "run_id" in record and "time" in record and record.get("suite") != "peak":
            runs[record["run_id"]].append(record)
    found: dict[tuple[str, ...], float] = {}
    for run_records in sorted(runs.values(), key=lambda rs: min(r["time"] for r in rs)):
        seconds = collections.defaultdict(list)
        previous = None
        for record in sorted(run_records, key=lambda r: r["time"]):
            moment = datetime.datetime.fromisoformat(record["time"])
            took = (moment - previous).total_seconds() if previous else _record_seconds(record)
            previous = moment
            if took is not None:
                seconds[record_key(record)].append(took)
        found |= {key: statistics.median(values) for key, values in seconds.items()}
    return found


def history(ctx: Context, folders: Iterable[Path]) -> list[dict[str, Any]]:
    """Earlier records in the JSONL files of `folders` of this device kind and run size."""
    kind = ctx.environment["device_kind"]
    found = []
    for folder in dict.fromkeys(Path(f).resolve() for f in folders):
        for path in sorted(folder.glob("*.jsonl")):
            found += [
                r
                for r in report.read_jsonl(path)
                if r.get("device_kind") == kind and r.get("smoke") == ctx.smoke
            ]
    return found


def dry_run(suites: list[str], ctx: Context, log: Callable[[str], None] = print) -> None:
    """List what each of `suites` will measure, with an estimate of its seconds, compiling
    nothing. A suite that cannot run here (its data or PyTorch missing) is listed with the
    reason its MmjaxError gives. The last line, `estimates: SUITE=SECONDS ...`, names the
    suites that can run (benchmarks/run_accelerator.sh reads it)."""
    known = durations(history(ctx, (ctx.out_dir, RESULTS)))
    sizes = "smoke" if ctx.smoke else ("accelerator" if ctx.accelerator else "cpu")
    log(f"dry run on {ctx.environment['device_kind']} ({sizes} sizes): {', '.join(suites)}")
    estimates: dict[str, float] = {}
    guessed = 0
    for name in suites:
        try:
            planned = suite_module(name).plan(ctx)
        except MmjaxError as err:
            log(f"{name}: cannot run here: {err}")
            continue
        seconds = [known.get(item.key) for item in planned]
        guessed += seconds.count(None)
        estimates[name] = STARTUP_S + sum(GUESS_S[ctx.smoke] if s is None else s for s in seconds)
        log(f"{name}: {len(planned)} measurements, about {estimates[name]:.0f} s")
        for item, s in zip(planned, seconds, strict=True):
            estimate = f"{GUESS_S[ctx.smoke]:.0f} s?" if s is None else f"{s:.0f} s"
            log(
                f"  {item.model:<28} {item.variant:<18} batch {item.batch:<4} "
                f"{item.dtype:<9} {estimate:>6}  {item.note}"
            )
    log(
        f"total: about {sum(estimates.values()):.0f} s ({STARTUP_S:.0f} s start-up per suite; "
        f"'?': {guessed} measurements not recorded before on this device, "
        f"{GUESS_S[ctx.smoke]:.0f} s each)"
    )
    log("estimates: " + " ".join(f"{name}={seconds:.0f}" for name, seconds in estimates.items()))
