"""Shared by the tools that write docs/results tables (run as `python tools/NAME.py`, which puts
this folder on the import path)."""

import statistics


def mean_std(values: list[float]) -> str:
    """ "0.123 ± 0.004" over seeds; one value as itself; none as "-"."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
