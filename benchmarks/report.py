"""Render a run's records as a Markdown table per suite and a PNG of throughput vs batch.

`python -m benchmarks.report RESULTS.jsonl ...` (re)writes both from the JSONL alone, e.g.
after a run that was stopped before it could write them (benchmarks/run_accelerator.sh does).
"""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

# Fields every record carries (the run's environment); the tables show them once, on top.
ENVIRONMENT = (
    "run_id",
    "smoke",
    "platform",
    "device_kind",
    "device_count",
    "process_count",
    "cpu_count",
    "jax_version",
    "git_revision",
    "xla_flags",
)
# Per-record detail that stays in the JSONL only.
DETAIL = {"suite", "time", "loadavg", "shapes", "iters", "lower_s", "flops_exact", "peak_source"}
DETAIL |= {"xla_flops", "achieved_flops", "peak_flops", "xla_flops_mismatch", "step_ms_p10"}
DETAIL |= {"step_ms_p90"}
SCALED = {"flops": ("GFLOP", 1e-9), "flops_per_s": ("GFLOP/s", 1e-9)}


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, dict | list | tuple):
        return str(value).replace("|", "/")
    return str(value)


def _columns(records: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for record in records:
        for key in record:
            if key not in columns and key not in ENVIRONMENT and key not in DETAIL:
                columns.append(key)
    return columns


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each measurement (suite, model, variant, batch, dtype, mesh), in
    first-seen order: a results file that several runs appended to reads as one run."""
    newest: dict[tuple, dict[str, Any]] = {}
    for record in records:
        key = tuple(str(record.get(k)) for k in ("suite", "model", "variant", "batch", "dtype"))
        newest[(*key, str(record.get("mesh")))] = record
    return list(newest.values())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a results file. A last line that is not whole JSON (a machine that
    stopped mid-write) is left out; a broken line anywhere else is a ValueError."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not a JSON record ({err})") from None
            print(f"{path}: left out its unfinished last line", file=sys.stderr)
    return records


def markdown(records: list[dict[str, Any]]) -> str:
    """One table per suite, in run order; the environment of each run on top."""
    if not records:
        return "No measurements.\n"
    lines = ["# mmjax benchmark results", ""]
    for run_id in dict.fromkeys(r["run_id"] for r in records):
        first = next(r for r in records if r["run_id"] == run_id)
        env = ", ".join(f"{key} {_format(first.get(key))}" for key in ENVIRONMENT[1:])
        lines.append(f"- run {run_id}: {env}")
    lines += [
        "",
        "step_ms is the median step (p10-p90 in the JSONL); flops are model FLOPs per step",
        "(dots and convolutions, mmjax/perf.py); mfu is against the peak in peak_source.",
    ]
    suites = list(dict.fromkeys(r["suite"] for r in records))
    for suite in suites:
        rows = [r for r in records if r["suite"] == suite]
        columns = _columns(rows)
        headers = [f"{c} ({SCALED[c][0]})" if c in SCALED else c for c in columns]
        lines += ["", f"## {suite}", "", "| " + " | ".join(headers) + " |"]
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            cells = []
            for c in columns:
                value = row.get(c)
                if c in SCALED and isinstance(value, int | float):
                    value = float(value) * SCALED[c][1]
                cells.append(_format(value))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


THROUGHPUT_PANELS = (("extract", "forward"), ("fused", "forward"))
PEER_RATIOS = ("ratio_vs_eager", "ratio_vs_compile", "ratio_vs_eager_mmjax_heap")


def plot(records: list[dict[str, Any]], path: Path) -> bool:
    """A panel per measured chart: samples/s against batch size (log-log, a line per model) for
    the extract and fused suites' forward passes, and the peer suite's ratios against PyTorch
    (bars at the median, whiskers over the interquartile range). Writes nothing and returns
    False when the records hold none of these."""
    from matplotlib.figure import Figure

    throughput = []
    for suite, variant in THROUGHPUT_PANELS:
        rows = [r for r in records if r["suite"] == suite and r.get("variant") == variant]
        if rows:
            throughput.append((f"{suite} ({variant})", rows))
    peer = [r for r in records if r["suite"] == "peer" and r.get("ratio_vs_eager") is not None]
    panels = len(throughput) + bool(peer)
    if not panels:
        return False
    fig = Figure(figsize=(7 * panels, 6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, (title, rows) in zip(axes, throughput, strict=False):
        for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
            points = sorted((r["batch"], r["samples_per_s"]) for r in rows if r["model"] == model)
            style = {"color": _tab20(i), "marker": "os^Dv"[i % 5]}
            ax.plot(*zip(*points), linestyle=("-", "--")[i // 20 % 2], label=model, **style)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples/s", title=title)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
    if peer:
        _peer_panel(axes[-1], peer)
    fig.suptitle(f"mmjax benchmarks on {records[0]['device_kind']}")
    fig.savefig(path, dpi=110)
    return True


def _tab20(i: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)


BUSY = "all rounds (machine busy)"  # suite_peer's `ratio_from` when too few rounds were quiet


def _peer_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    """mmjax's time over PyTorch's (eager and torch.compile) per model and variant. A ratio
    measured on a busy machine is drawn faint and hatched, and its label says so."""
    busy = [r.get("ratio_from") == BUSY for r in rows]
    labels = [f"{r['model']} {r['variant']}" for r in rows]
    labels = [label + " (busy)" * b for label, b in zip(labels, busy, strict=True)]
    y = list(range(len(rows)))
    keys = [key for key in PEER_RATIOS if all(key in r for r in rows)]  # older runs: two
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        medians = [r[key] for r in rows]
        iqr = [r.get(f"{key}_iqr") or [m, m] for r, m in zip(rows, medians, strict=True)]
        whiskers = [[m - lo for m, (lo, _) in zip(medians, iqr, strict=True)],
                    [hi - m for m, (_, hi) in zip(medians, iqr, strict=True)]]  # fmt: skip
        offsets = [v + (k - (len(keys) - 1) / 2) * width for v in y]
        bars = ax.barh(offsets, medians, width, xerr=whiskers, label=key.replace("ratio_vs_", "/ "))
        for bar, is_busy in zip(bars, busy, strict=True):
            if is_busy:
                bar.set(alpha=0.3, hatch="//")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set(xlabel="mmjax time / PyTorch time (< 1: mmjax faster)", title="peer (median, IQR)")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def write(results: Path) -> tuple[Path, Path | None]:
    """`<stem>.md` and `<stem>.png` next to the JSONL file `results`, from its newest record
    of each measurement; returns both paths (None for the chart when nothing in the records
    can be charted)."""
    return render(results, latest(read_jsonl(results)))


def render(results: Path, records: list[dict[str, Any]]) -> tuple[Path, Path | None]:
    """`write`'s table and chart of `records` (already read from `results`)."""
    table, figure = results.with_suffix(".md"), results.with_suffix(".png")
    table.write_text(markdown(records))
    if not plot(records, figure):
        figure.unlink(missing_ok=True)  # an older chart of this file would not match the table
        return table, None
    return table, figure


def anchor(records: list[dict[str, Any]]) -> str:
    """One line on the accelerator anchor: ResNet-50's bfloat16 train step (its newest
    record), in images/s and MFU; or why the records hold none."""
    found = [
        r
        for r in records
        if r["suite"] == "train" and r.get("model") == "resnet50" and r.get("dtype") == "bfloat16"
    ]
    if not found:
        if any(r.get("smoke") for r in records):
            return "smoke run: ResNet-50 bf16 runs at full size only"
        return "no ResNet-50 bf16 result: see the train suite's output"
    r = found[-1]
    mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a (no peak for it)"
    return (
        f"ResNet-50 bf16 {r['variant']}, batch {r['batch']}, {r['shapes']['image'][1]} px, "
        f"{r['mesh']}: {r['samples_per_s']:.0f} img/s, MFU {mfu} ({r['device_kind']})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="write <stem>.md and <stem>.png next to each results file",
    )
    parser.add_argument("results", nargs="+", type=Path, help="JSONL files of benchmark runs")
    for results in parser.parse_args(argv).results:
        records = latest(read_jsonl(results))
        table, figure = render(results, records)
        print(f"{results}: {len(records)} measurements")
        print(f"table: {table}\nplot: {figure or 'none (nothing measured here is charted)'}")
        print(anchor(records))


if __name__ == "__main__":
    main()
