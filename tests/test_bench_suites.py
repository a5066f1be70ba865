"""The pipeline and checkpoint benchmark suites run in smoke mode and write well-formed records
(fields present, finite positive timings, fractions in [0, 1], the JSONL file matches). No
timing is compared with another: a benchmark reports, it does not assert speed."""

import json
import math
from pathlib import Path
from typing import Any

from benchmarks import suite_checkpoint, suite_pipeline
from benchmarks.harness import Context

COMMON = ("suite", "model", "batch", "variant", "protocol", "run_id", "device_kind", "time")


def _positive(record: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = record[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value > 0, (key, value)


def _fraction(record: dict[str, Any], key: str) -> None:
    value = record[key]
    assert math.isfinite(value) and 0 <= value <= 1, (key, value)


def _check_file(ctx: Context) -> None:
    lines = Path(ctx.results_path).read_text().splitlines()
    assert [json.loads(line) for line in lines] == ctx.records


def _by_variant(records: list[dict[str, Any]], suite: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        assert record["suite"] == suite
        for key in COMMON:
            assert key in record, key
        assert record["smoke"] is True
        out.setdefault(record["variant"], []).append(record)
    return out


def test_pipeline_suite_smoke(tmp_path, avdigits_root):
    ctx = Context(smoke=True, out_dir=tmp_path)
    suite_pipeline.run(ctx, data_root=avdigits_root)
    _check_file(ctx)
    variants = _by_variant(ctx.records, "pipeline")
    assert sorted(variants) == ["loader", "loop", "step"]
    for record in ctx.records:
        assert record["model"] == "avdigits_late" and record["batch"] == 8
        assert record["data_root"] == str(avdigits_root) and record["dataset_small"] is True
        assert record["train_records"] > 0
    (step,) = variants["step"]
    _positive(step, "first_step_s", "step_ms_p10", "step_ms_p50", "step_ms_p90", "samples_per_s")
    (loader,) = variants["loader"]  # a smoke run times workers=0 only
    assert loader["workers"] == 0
    _positive(loader, "first_batch_s", "samples_per_s", "put_samples_per_s", "loader_over_step")
    _positive(loader, "loader_and_put_samples_per_s", "step_samples_per_s")
    assert isinstance(loader["meets_loader_target"], bool)
    loops = {r["protocol_name"]: r for r in variants["loop"]}
    assert sorted(loops) == ["blocking", "loop_py", "no_prefetch"]
    for name, loop in loops.items():
        _positive(loop, "wall_s", "loop_step_ms", "samples_per_s", "loader_over_step", "steps")
        _fraction(loop, "data_wait_fraction")
        put = loop["put_wait_s"]
        assert (put is None) == (name == "loop_py")  # the prefetch thread places the batches
        assert loop["next_wait_s"] >= 0 and (put or 0) >= 0
        assert loop["next_wait_s"] + (put or 0) <= loop["wall_s"]
        assert isinstance(loop["meets_data_wait_target"], bool)
    assert not (tmp_path / "pipeline_metrics.jsonl").exists()


def test_pipeline_suite_builds_its_smoke_dataset(tmp_path, monkeypatch, avdigits_root):
    """Without a data root a smoke run builds the small AV-Digits under out_dir/data (here the
    build is replaced by a copy of the session's small build, to keep the test fast)."""
    import shutil

    from mmjax.data.builders import avdigits

    built = []

    def fake_prepare(root, *, small=False, seed=0, progress=True):
        built.append(small)
        shutil.copytree(Path(avdigits_root) / "avdigits", Path(root) / "avdigits")

    monkeypatch.setattr(avdigits, "prepare_avdigits", fake_prepare)
    ctx = Context(smoke=True, out_dir=tmp_path)
    assert suite_pipeline.dataset_root(ctx) == tmp_path / "data"
    assert suite_pipeline.dataset_root(ctx) == tmp_path / "data"  # built once
    assert built == [True]


def test_pipeline_suite_names_the_prepare_command(tmp_path, monkeypatch):
    import pytest

    from mmjax.errors import DataError

    monkeypatch.setenv("MMJAX_DATA", str(tmp_path / "empty"))
    ctx = Context(smoke=False, out_dir=tmp_path)
    with pytest.raises(DataError, match="mmjax data prepare avdigits"):
        suite_pipeline.dataset_root(ctx)


def test_checkpoint_suite_smoke(tmp_path):
    ctx = Context(smoke=True, out_dir=tmp_path)
    suite_checkpoint.run(ctx)
    _check_file(ctx)
    variants = _by_variant(ctx.records, "checkpoint")
    assert sorted(variants) == ["raw", "restore", "save", "step"]
    for record in ctx.records:
        assert record["model"] == "avdigits_late" and record["batch"] == 8
        _positive(record, "params", "state_bytes", "state_mb", "state_leaves")
        assert record["state_bytes"] > 4 * record["params"]  # parameters plus Adam moments
    (step,) = variants["step"]
    _positive(step, "first_step_s", "step_ms_p50", "samples_per_s")
    (save,) = variants["save"]
    _positive(save, "first_blocking_s", "first_total_s", "blocking_s", "total_s", "step_s")
    _positive(save, "blocking_mbps", "total_mbps", "blocking_over_step", "total_over_raw")
    _positive(save, "raw_write_mbps", "checkpoint_bytes_on_disk")
    assert save["blocking_s"] <= save["total_s"]
    assert save["first_blocking_s"] <= save["first_total_s"]
    assert isinstance(save["meets_blocking_target"], bool)
    (restore,) = variants["restore"]
    _positive(restore, "first_restore_s", "restore_s", "restore_mbps", "raw_read_mbps")
    _positive(restore, "restore_over_raw")
    (raw,) = variants["raw"]
    _positive(raw, "host_fetch_s", "write_s", "read_s", "write_mbps", "read_mbps")
    # The checkpoint directory is removed; only the results file remains.
    assert [p.name for p in tmp_path.iterdir()] == [Path(ctx.results_path).name]
