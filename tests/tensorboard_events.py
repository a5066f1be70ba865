"""A run's TensorBoard events, read back with TensorBoard's own reader."""

import json

import pytest


def tensorboard_events(workdir):
    """The run's TensorBoard events as TensorBoard itself reads them (orphans purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    everything = {"scalars": 0, "images": 0, "tensors": 0}
    events = EventAccumulator(str(workdir / "tb"), everything, purge_orphaned_data=True)
    events.Reload()
    return events


def assert_tensorboard_equals_metrics(workdir):
    events = tensorboard_events(workdir)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    keys = {k for row in rows for k in row} - {"step", "skipped_steps", "wall_s"}
    assert {"loss", "learning_rate", "grad_norm", "examples_per_s", "data_wait_fraction"} <= keys
    for key in keys:
        tag = key if "/" in key else f"train/{key}"
        logged = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows if key in r]
        assert [(e.step, e.value) for e in events.Scalars(tag)] == logged, tag
    return events
