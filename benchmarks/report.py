"""Render a run's records as a Markdown table per suite and a PNG of throughput vs batch."""

import json
import math
from pathlib import Path
from typing import Any

from mmjax.errors import MmjaxError

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
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """samples/s against batch size (log-log): one line per encoder (extract) and per fused
    model's forward pass (fused)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MmjaxError(
            "the benchmark plot needs matplotlib: pip install 'mmjax[bench]' "
            "(or pip install 'matplotlib>=3.8')"
        ) from None
    panels = (("extract", "forward"), ("fused", "forward"))
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 6))
    for ax, (suite, variant) in zip(axes, panels):
        rows = [r for r in records if r["suite"] == suite and r.get("variant") == variant]
        for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
            points = sorted((r["batch"], r["samples_per_s"]) for r in rows if r["model"] == model)
            style = {"color": plt.get_cmap("tab20")(i % 20), "marker": "os^Dv"[i % 5]}
            ax.plot(*zip(*points), linestyle=("-", "--")[i // 20 % 2], label=model, **style)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples/s")
        ax.set_title(f"{suite} ({variant})")
        if rows:
            ax.legend(fontsize=6, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
    kind = records[0]["device_kind"] if records else ""
    fig.suptitle(f"mmjax throughput on {kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: Path) -> tuple[Path, Path]:
    """`<stem>.md` and `<stem>.png` next to the JSONL file `results`, from its newest record
    of each measurement; returns both paths."""
    records = latest(read_jsonl(results))
    table, figure = results.with_suffix(".md"), results.with_suffix(".png")
    table.write_text(markdown(records))
    plot(records, figure)
    return table, figure
