"""The benchmark harness and its timing suites run, and what they write is well-formed.

Timings are never asserted (docs/architecture.md: Contracts): these tests check that every
record has the fields the issue names, with sane values, and that the CLI writes the JSONL,
table and plot.
(tests/test_bench_suites.py covers the pipeline and checkpoint suites, and
tests/test_peer_torch.py the PyTorch peers.)
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from benchmarks import core_probe, harness, peer_worker, report, suite_peer
from mmjax.cli import main

TIMING_FIELDS = (
    "model",
    "variant",
    "batch",
    "dtype",
    "mesh",
    "device_kind",
    "git_revision",
    "compile_s",
    "step_ms_p10",
    "step_ms_p50",
    "step_ms_p90",
    "samples_per_s",
    "flops",
    "xla_flops",
    "mfu",
)


def _check_timing(record: dict) -> None:
    missing = [f for f in TIMING_FIELDS if f not in record]
    assert not missing, f"{record['suite']} {record['model']}: no {missing}"
    assert record["compile_s"] > 0 and record["flops"] > 0
    assert 0 < record["step_ms_p10"] <= record["step_ms_p50"] <= record["step_ms_p90"]
    assert math.isclose(record["samples_per_s"], record["batch"] * 1000 / record["step_ms_p50"])
    assert record["peak_source"].startswith("measured:matmul")  # CPU: the same-run peak
    assert record["mfu"] > 0 and math.isfinite(record["mfu"])


@pytest.fixture(scope="module")
def timing_run(tmp_path_factory):
    ctx = harness.Context(smoke=True, out_dir=tmp_path_factory.mktemp("bench"))
    harness.run(["fused", "train"], ctx, log=lambda _: None)
    return ctx


def test_fused_suite_records(timing_run):
    rows = [r for r in timing_run.records if r["suite"] == "fused"]
    heads = [r for r in rows if r["model"].startswith("avdigits:")]
    encoders = [r for r in rows if r["model"].startswith("encoder:")]
    assert {r["variant"] for r in heads} == {"forward", "forward+backward"}
    assert {r["model"] for r in encoders} == {"encoder:small_cnn", "encoder:cnn_lstm"}
    for r in rows:
        _check_timing(r)
    for r in heads:
        same = [e for e in encoders if e["variant"] == r["variant"] and e["batch"] == r["batch"]]
        assert math.isclose(r["encoders_ms"], sum(e["step_ms_p50"] for e in same))
        assert math.isclose(r["fusion_overhead"], r["step_ms_p50"] / r["encoders_ms"] - 1)
        # the whole model runs both encoders: more model FLOPs than their sum
        assert r["flops"] > sum(e["flops"] for e in same)


def test_train_suite_records(timing_run):
    rows = [r for r in timing_run.records if r["suite"] == "train"]
    for r in rows:
        _check_timing(r)
    meshes = {(r["model"], r["mesh"]) for r in rows}
    assert ("avdigits_late", "data=1") in meshes
    assert ("avdigits_late", f"data={jax.device_count()}") in meshes
    assert ("avdigits_late", "bfloat16") in {(r["model"], r["dtype"]) for r in rows}
    # the train step's count includes the backward pass: about 3x one forward pass
    fused = [r for r in timing_run.records if r["suite"] == "fused"]
    assert all(r["flops"] > 0 for r in fused)


def test_results_file_holds_every_record(timing_run):
    lines = report.read_jsonl(timing_run.results_path)
    assert lines == json.loads(json.dumps(timing_run.records))
    assert timing_run.results_path.name.endswith("-smoke.jsonl")


def test_cli_writes_results_table_and_plot(tmp_path, capsys):
    assert main(["bench", "extract", "--smoke", "--out", str(tmp_path)]) == 0
    (results,) = tmp_path.glob("*.jsonl")
    records = report.read_jsonl(results)
    extract = [r for r in records if r["suite"] == "extract"]
    assert {r["model"] for r in extract} == {"small_cnn", "cnn_lstm", "bilstm", "text_transformer"}
    for r in extract:
        _check_timing(r)
    table = results.with_suffix(".md").read_text()
    assert "## extract" in table and "| small_cnn |" in table
    assert results.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a later run's rows replace this one's in the table; the JSONL keeps both
    rerun = [r | {"run_id": "later", "step_ms_p50": -1.0} for r in records]
    newest = report.latest(records + rerun)
    assert len(newest) == len(records) and all(r["run_id"] == "later" for r in newest)


def test_cli_rejects_an_unknown_suite(tmp_path, capsys):
    assert main(["bench", "extrakt", "--out", str(tmp_path)]) == 2
    assert "unknown suite 'extrakt'" in capsys.readouterr().err


def test_peer_suite_records(tmp_path):
    ctx = harness.Context(smoke=True, out_dir=tmp_path)
    harness.run(["peer"], ctx, log=lambda _: None)
    rows = [r for r in ctx.records if r["suite"] == "peer"]
    assert {r["variant"] for r in rows} == {"train_step", "forward"}
    for r in rows:
        assert r["mmjax_ms"] > 0 and r["eager_ms"] > 0 and r["compile_ms"] > 0
        assert r["eager_mmjax_heap_ms"] > 0 and "target_vs_eager_mmjax_heap" not in r
        assert r["torch_threads"] >= 1 and r["rounds"] >= 2
        # a smoke run's rounds come from two sets of processes, one round (or two) each
        assert r["generations"] == 2 and r["calls_per_round"] == [2, 2]
        assert r["round_warmup_s"] == suite_peer.ROUND_WARMUP_S > 0
        for peer in ("eager", "compile", "eager_mmjax_heap"):
            low, high = r[f"ratio_vs_{peer}_iqr"]
            assert 0 < low <= r[f"ratio_vs_{peer}"] <= high
            assert len(r[f"ratio_vs_{peer}_per_generation"]) == 2
            assert all(ratio > 0 for ratio in r[f"ratio_vs_{peer}_per_generation"])
    (train,) = (r for r in rows if r["variant"] == "train_step")
    assert train["target_vs_eager"] == 0.8 and train["target_vs_compile"] == 1.0
    # judged only when enough rounds were quiet (CI's other worker may keep the machine busy)
    quiet = train["ratio_from"] != "all rounds (machine busy)"
    assert 0 <= train["quiet_rounds"] <= train["rounds"] == len(train["cotenant_share"])
    assert quiet == (train["quiet_rounds"] >= 2)  # a smoke run's 2 rounds
    # the machine's parallel speed-up, probed around each round; 0.85 per core is full speed
    speedups = train["parallel_speedup"]
    assert len(speedups) == train["rounds"] and all(s > 0 for s in speedups)
    assert train["full_speed_threshold"] > 0
    assert 0 <= train["full_speed_rounds"] <= train["quiet_rounds"]
    full = train["ratio_from"] == "quiet rounds at full parallel speed"
    assert full == (train["full_speed_rounds"] >= 2)
    assert isinstance(train["meets_target_vs_eager"], bool if quiet else type(None))


def test_the_parallel_speedup_probe_reads_a_speedup():
    # a reading only: the suite records it, and speed is never asserted in a test
    assert core_probe.parallel_speedup() > 0
    cores = os.cpu_count() or 1
    if cores > 1:  # full speed: more than one core's work, at most every core's
        assert 1 < core_probe.full_speed_threshold() <= cores


def test_a_round_times_its_calls_after_the_untimed_warm_up():
    made = []

    def call():
        made.append(time.perf_counter())
        time.sleep(0.005)

    started = time.perf_counter()
    times = peer_worker.round_times(call, 3, warmup_s=0.03)
    assert len(times) == 3 and all(t >= 0.005 for t in times)
    # untimed calls until 0.03 s had passed, then the 3 timed ones
    assert len(made) > 3 and made[-3] - started >= 0.03
    made.clear()
    assert len(peer_worker.round_times(call, 2)) == 2 and len(made) == 2  # no warm-up at 0


def test_a_processs_cpu_time_grows_while_it_works_and_stops_while_it_sleeps():
    # single-threaded children, so that no thread ends between two readings
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)  # both past their start-up
        readings = [(peer_worker.cpu_ns(busy.pid), peer_worker.cpu_ns(idle.pid))]
        time.sleep(0.1)
        readings.append((peer_worker.cpu_ns(busy.pid), peer_worker.cpu_ns(idle.pid)))
    finally:
        busy.kill()
        idle.kill()
    (busy_before, idle_before), (busy_after, idle_after) = readings
    assert busy_after > busy_before and idle_after == idle_before


def test_the_mmjax_peer_worker_never_loads_torch():
    """The peer suite's mmjax process builds and runs its model without importing PyTorch."""
    probe = (
        "import sys; from benchmarks.peer_worker import _mmjax_calls; "
        "calls, _ = _mmjax_calls('image_cnn', 2); calls['train_step']['mmjax'](); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[-1] == "False", out.stdout + out.stderr[-2000:]


def test_the_chart_shows_what_was_measured_and_nothing_empty(tmp_path):
    peer = {"suite": "peer", "variant": "train_step", "device_kind": "cpu"}
    peer |= {"ratio_vs_eager": 0.9, "ratio_vs_eager_iqr": [0.8, 1.0]}
    peer |= {"ratio_vs_compile": 1.2, "ratio_vs_compile_iqr": [1.1, 1.3]}
    records = [peer | {"model": "bilstm"}, peer | {"model": "image_cnn"}]
    assert report.plot(records, tmp_path / "peer.png")
    picture = np.asarray(Image.open(tmp_path / "peer.png").convert("L"), np.float32)
    assert picture.shape[1] < 1.5 * picture.shape[0] and picture.std() > 10  # one panel, drawn
    checkpoint_only = [{"suite": "checkpoint", "variant": "save", "device_kind": "cpu"}]
    assert not report.plot(checkpoint_only, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_the_chart_marks_ratios_from_a_busy_machine():
    from matplotlib.container import BarContainer
    from matplotlib.figure import Figure

    peer = {"suite": "peer", "variant": "train_step", "ratio_vs_eager": 0.9}
    peer |= {"ratio_vs_compile": 1.2}
    rows = [peer | {"model": "bilstm", "ratio_from": "quiet rounds"}]
    rows += [peer | {"model": "image_cnn", "ratio_from": report.BUSY}]
    ax = Figure().subplots()
    report._peer_panel(ax, rows)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["bilstm train_step", "image_cnn train_step (busy)"]
    bars = [bar for bars in ax.containers if isinstance(bars, BarContainer) for bar in bars]
    faint = {(bar.get_alpha(), bar.get_hatch()) for bar in bars}
    assert faint == {(None, None), (0.3, "//")} and len(bars) == 4
