"""How fast `mmjax data import` turns real media files into a dataset, how much memory it
needs, and whether an imported dataset trains as fast as a built-in one.

Everything happens in a temporary folder (kept with --keep). The script measures:

1. **Import throughput** per kind, at `--workers 1` and `--workers 2`. It writes real files:
   PNG crops (200-300 px) of scikit-image's chelsea photograph; 2 s, 16 kHz WAVs made of
   Asterisk's spoken digits (8 kHz recordings, resampled); 2 s H.264 MP4 clips (64-96 px,
   10-15 fps, panning over chelsea or coffee) with an AAC track of spoken digits. Every file
   is distinct (no manifest row reuses a file). Each (kind, workers) is imported in a fresh
   Python process, twice: the first call ("cold") pays the lazy imports and, with 2 workers,
   the forkserver's start-up; the second ("warm", another dataset name) is the steady rate.
   Images are imported at 64 px, audio at 16 kHz for 2 s, video as 8 frames of 64 px with
   `sample_rate` 16000, so each clip's AAC track is decoded as the audio modality; "video,
   no audio" imports the same clips through a manifest whose `audio` column is empty, so the
   importer decodes the frames only. The CPU seconds of the importing process and of the
   pool's processes are recorded as well (rows per CPU second is the per-core rate).
2. **Decoding alone**: `mmjax.data.media.decode_video` on one clip (8 frames of 64 px, with
   and without its audio track), `decode_image` and `decode_audio` on one file, warm, per
   call, in this process: the import's cost above this is the importer's own (task
   pickling, the pool, npz encoding, ArrayRecord writing, sha256).
3. **The pool's start-up**: a forkserver pool of 2 as `mmjax.data.imports.build` makes it
   (its preload imports mmjax), cold and warm, and the import time of the modules involved.
4. **Peak memory** of an audio import at 2,000 and at 20,000 rows (the rows cycle over 300
   distinct WAVs), at 1 and 2 workers, each in a fresh process: the importing process's
   maximum RSS (GNU time's %M, and its VmHWM), its RSS before the import, and the pool
   processes' peak RSS and PSS (sampled every 0.1 s / 1 s with psutil).
5. **Training on an imported dataset against a built-in one**: AV-Digits (`--small`) is
   built, its train/val/test records are written out as files (8x8 gray PNG, 1 s 8 kHz
   WAV) and imported back (`--image-size 8 --sample-rate 8000 --audio-seconds 1`, the
   built split of each record kept), which gives the same pixels (as RGB) and the same
   samples (checked). The model `avdigits_late` (image encoder `in_channels` 3 for the
   import, 1 for the build), batch 64, trains on each in a fresh process: the grain loader
   alone (`next()` per batch), the jitted step alone on a device-resident batch, and a
   blocking loop (next -> put_batch -> step), in two rounds that alternate the order.

Results: one JSON line per measurement in `OUT/import-DATE.jsonl` and a Markdown summary
`OUT/import-DATE.md` (OUT: benchmarks/results). A full run takes about 6-10 minutes on 2
cores; --quick shrinks every size (a smoke run, written to a temporary folder unless
--out-dir is given).

Usage:

    .venv/bin/python tools/import_throughput.py
    .venv/bin/python tools/import_throughput.py --quick --keep
    .venv/bin/python tools/import_throughput.py --summary benchmarks/results/import-DATE.jsonl
"""

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHILD_FLAG = "--child"
RESULT_MARK = "IMPORT_THROUGHPUT_RESULT "
CLASSES = 4
IMAGE_SIZE = 64
SAMPLE_RATE = 16_000
AUDIO_SECONDS = 2.0
FRAMES = 8
MB = 1024 * 1024
TRAIN_MODEL = "avdigits_late"
TRAIN_BATCH = 64
BUILT_NAME = "avdigits"
IMPORTED_NAME = "avdigits-files"


# ----------------------------------------------------------------------------- helpers


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _git_revision() -> str:
    sys.path.insert(0, str(REPO))
    from benchmarks.harness import _git_revision as revision

    return revision()


def _write_manifest(path: Path, columns: Sequence[str], rows: list[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


GNU_TIME = Path("/usr/bin/time")


def _run_child(spec: dict[str, Any], timeout: float) -> tuple[dict[str, Any], float, float]:
    """Runs `spec` in a fresh Python process -> (its result, its max RSS in MB, wall seconds).

    The max RSS is GNU time's %M: the peak of that process alone (its pool's processes are
    its forkserver's children, which it never reaps; it samples those itself). Not the
    rusage this process would get from `wait4`: a child started from here inherits, at its
    exec, this process's own high-water RSS (Linux copies the old address space's peak into
    the new one's maxrss), so it would read at least as high as this (large) process. Without
    GNU time, the child's VmHWM (its peak since exec) stands in.
    """
    command = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, json.dumps(spec)]
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        if GNU_TIME.is_file():
            command = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *command]
        started = time.perf_counter()
        with (Path(tmp) / "out").open("w+") as out:
            try:
                done = subprocess.run(
                    command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout
                )
                code = done.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            wall = time.perf_counter() - started
            out.seek(0)
            text = out.read()
        lines = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
        if code or not lines:
            raise RuntimeError(f"child {spec['task']} failed ({code}); its output:\n{text[-4000:]}")
        result = json.loads(lines[-1][len(RESULT_MARK) :])
        if rss_file.is_file():
            max_rss_mb = int(rss_file.read_text().split()[-1]) / 1024
        else:
            max_rss_mb = result.get("vm_hwm_mb", float("nan"))
    return result, max_rss_mb, wall


def _vm_hwm_mb() -> float:
    """This process's peak RSS since its exec (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Results:
    """The run's records: appended to the JSONL file as they come, kept for the summary."""

    def __init__(self, path: Path, run_id: str, revision: str, *, fresh: bool = True):
        self.path, self.run_id, self.revision = path, run_id, revision
        self.records: list[dict[str, Any]] = []
        if fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    @classmethod
    def load(cls, path: Path) -> "Results":
        """The records of an earlier run's JSONL file (its last run if it holds several)."""
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not records:
            raise SystemExit(f"{path}: no records")
        last = records[-1]
        results = cls(path, last["run_id"], last["git_revision"], fresh=False)
        results.records = [r for r in records if r["run_id"] == last["run_id"]]
        return results

    def add(self, what: str, **fields: Any) -> dict[str, Any]:
        record = {
            "what": what,
            **fields,
            "loadavg": fields.get("loadavg", _loadavg()),
            "cpu_count": os.cpu_count(),
            "git_revision": self.revision,
            "run_id": self.run_id,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        shown = {k: v for k, v in record.items() if k not in ("git_revision", "run_id", "time")}
        print(json.dumps(shown), flush=True)
        return record

    def find(self, what: str, **match: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r["what"] == what and all(r.get(k) == v for k, v in match.items())
        ]


# ----------------------------------------------------------------------------- media files


def _digit_waves() -> list[tuple[Any, int]]:
    sys.path.insert(0, str(REPO))
    from tests.media_files import digit_recording

    return [digit_recording(n) for n in range(10)]


def _speech(rng: Any, waves: list[tuple[Any, int]], seconds: float) -> tuple[Any, int]:
    """float32 [seconds at SAMPLE_RATE]: three random spoken digits -> (wave, first digit)."""
    import math

    import numpy as np
    from scipy.signal import resample_poly

    digits = rng.integers(0, 10, size=3)
    rate = waves[0][1]
    speech = np.concatenate([waves[d][0] for d in digits])
    g = math.gcd(rate, SAMPLE_RATE)
    wave = resample_poly(speech, SAMPLE_RATE // g, rate // g).astype(np.float32)
    out = np.zeros(round(seconds * SAMPLE_RATE), np.float32)
    out[: min(out.size, wave.size)] = wave[: out.size]
    return out, int(digits[0])


def make_images(folder: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """n PNG crops (200-300 px a side) of chelsea -> [(file name, label)]."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    cat = data.chelsea()  # 300 x 451
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = (int(rng.integers(200, 301)) for _ in range(2))
        top = int(rng.integers(0, cat.shape[0] - h + 1))
        left = int(rng.integers(0, cat.shape[1] - w + 1))
        name = f"image{i:05d}.png"
        Image.fromarray(cat[top : top + h, left : left + w]).save(folder / name)
        rows.append((name, f"c{i % CLASSES}"))
    return rows


def make_audio(folder: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """n 2 s 16 kHz PCM WAVs of three spoken digits -> [(file name, first digit)]."""
    import numpy as np
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    waves = _digit_waves()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        wave, digit = _speech(rng, waves, AUDIO_SECONDS)
        name = f"audio{i:05d}.wav"
        soundfile.write(folder / name, wave, SAMPLE_RATE, subtype="PCM_16")
        rows.append((name, f"d{digit}"))
    return rows


CLIP_SHAPES = ((64, 64), (72, 96), (64, 80), (96, 96))  # (height, width), even sides


def make_clips(folder: Path, n: int, seed: int) -> list[tuple[str, str, dict[str, int]]]:
    """n 2 s H.264+AAC MP4s: a window of 64-96 px panning over a photograph at 10-15 fps,
    spoken digits on the audio track -> [(file name, label, its shape)]."""
    import numpy as np
    from skimage import data

    sys.path.insert(0, str(REPO))
    from tests.media_files import write_clip

    folder.mkdir(parents=True, exist_ok=True)
    photos = (data.chelsea(), data.coffee())  # 300 x 451, 400 x 600
    waves = _digit_waves()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        photo = photos[i % len(photos)]
        fps = int(rng.integers(10, 16))
        count = round(AUDIO_SECONDS * fps)
        h, w = CLIP_SHAPES[int(rng.integers(len(CLIP_SHAPES)))]
        step = int(rng.integers(1, (photo.shape[1] - w) // (count - 1) + 1))
        top = int(rng.integers(0, photo.shape[0] - h + 1))
        frames = np.stack([photo[top : top + h, t * step : t * step + w] for t in range(count)])
        audio, _ = _speech(rng, waves, AUDIO_SECONDS)
        name = f"clip{i:05d}.mp4"
        write_clip(folder / name, frames, fps, audio, SAMPLE_RATE)
        rows.append((name, f"c{i % CLASSES}", {"fps": fps, "height": h, "width": w}))
    return rows


# ----------------------------------------------------------------------------- child processes


class _PoolSampler:
    """Samples this process's descendants (forkserver and pool workers) every `every` s:
    peak RSS per process and of their sum, PSS sums every second, last CPU seconds."""

    def __init__(self, every: float = 0.1, pss_every: float = 1.0):
        import psutil

        self.psutil, self.me = psutil, psutil.Process()
        self.every, self.pss_every = every, pss_every
        self.peak_rss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.peak_rss_sum = 0
        self.peak_pss_sum = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "_PoolSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join()

    def _loop(self) -> None:
        last_pss = 0.0
        while not self.stop_flag.is_set():
            want_pss = time.perf_counter() - last_pss >= self.pss_every
            self._sample(want_pss)
            if want_pss:
                last_pss = time.perf_counter()
            self.stop_flag.wait(self.every)

    def _sample(self, want_pss: bool) -> None:
        rss_sum = pss_sum = 0
        try:
            children = self.me.children(recursive=True)
        except self.psutil.Error:
            return
        for child in children:
            try:
                with child.oneshot():
                    rss = child.memory_info().rss
                    times = child.cpu_times()
                    parent = child.ppid()
                    if child.pid not in self.role:
                        self.role[child.pid] = self._role(child, parent)
                if want_pss:
                    pss_sum += child.memory_full_info().pss
            except self.psutil.Error:
                continue
            self.peak_rss[child.pid] = max(self.peak_rss.get(child.pid, 0), rss)
            self.cpu[child.pid] = times.user + times.system
            rss_sum += rss
        self.peak_rss_sum = max(self.peak_rss_sum, rss_sum)
        self.peak_pss_sum = max(self.peak_pss_sum, pss_sum)

    def _role(self, child: Any, parent: int) -> str:
        """multiprocessing's resource tracker, the forkserver (this process's child) or a
        pool worker (the forkserver's child)."""
        if "resource_tracker" in " ".join(child.cmdline()):
            return "resource_tracker"
        return "forkserver" if parent == self.me.pid else "worker"

    def summary(self) -> dict[str, Any]:
        def of(role: str) -> list[int]:
            return [p for p, r in self.role.items() if r == role]

        workers, servers = of("worker"), of("forkserver")
        return {
            "pool_processes": len(self.role),
            "workers_max_rss_mb": [round(self.peak_rss[p] / MB, 1) for p in workers],
            "forkserver_max_rss_mb": [round(self.peak_rss[p] / MB, 1) for p in servers],
            "resource_tracker_max_rss_mb": [
                round(self.peak_rss[p] / MB, 1) for p in of("resource_tracker")
            ],
            "pool_peak_rss_sum_mb": round(self.peak_rss_sum / MB, 1),
            "pool_peak_pss_sum_mb": round(self.peak_pss_sum / MB, 1),
            "workers_cpu_s": round(sum(self.cpu[p] for p in workers), 3),
            "forkserver_cpu_s": round(sum(self.cpu[p] for p in servers), 3),
        }


def _cpu_self() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _DecodeClock:
    """Wraps the importer's decoder context (`mmjax.data.imports.build._decoder`, read, not
    changed) to time its start (the pool's creation) and the calls that wait for decoded
    rows; the rest of an import is the importing process's own work."""

    def __init__(self) -> None:
        from mmjax.data.imports import build

        self.start_s = self.wait_s = 0.0
        self.calls = 0
        original = build._decoder.__enter__

        def enter(decoder: Any) -> Any:
            started = time.perf_counter()
            decode_many = original(decoder)
            self.start_s += time.perf_counter() - started

            def timed(chunks: Any) -> Any:
                rows = decode_many(chunks)
                while True:
                    began = time.perf_counter()
                    row = next(rows, None)
                    self.wait_s += time.perf_counter() - began
                    if row is None:
                        return
                    self.calls += 1
                    yield row

            return timed

        build._decoder.__enter__ = enter

    def reset(self) -> None:
        self.start_s = self.wait_s = 0.0
        self.calls = 0


def child_import(spec: dict[str, Any]) -> dict[str, Any]:
    """Imports spec's manifest `repeat` times (names NAME-0, NAME-1, ...), each timed."""
    import psutil

    from mmjax.data import import_manifest

    baseline = psutil.Process().memory_info().rss
    clock = _DecodeClock()
    runs = []
    for i in range(spec["repeat"]):
        name = f"{spec['name']}-{i}"
        load_before = _loadavg()
        cpu = _cpu_self()
        clock.reset()
        with _PoolSampler() as sampler:
            started = time.perf_counter()
            info = import_manifest(
                name,
                spec["manifest"],
                label="label",
                data_dir=spec["data_dir"],
                workers=spec["workers"],
                progress=False,
                **spec["settings"],
            )
            seconds = time.perf_counter() - started
        rows = sum(s["num_records"] for s in info["splits"].values())
        runs.append(
            {
                "seconds": round(seconds, 4),
                "rows": rows,
                "skipped_rows": info["skipped_rows"],
                "modalities": {m: e["shape"] for m, e in info["modalities"].items()},
                "missing": {m: e["missing"] for m, e in info["modalities"].items()},
                "main_cpu_s": round(_cpu_self() - cpu, 3),
                "pool_start_s": round(clock.start_s, 4),
                "decode_wait_s": round(clock.wait_s, 4),
                "decode_calls": clock.calls,
                "own_work_s": round(seconds - clock.start_s - clock.wait_s, 4),
                "vm_hwm_so_far_mb": round(_vm_hwm_mb(), 1),
                "loadavg_before": load_before,
                "loadavg": _loadavg(),
                **sampler.summary(),
            }
        )
        if spec.get("delete"):
            shutil.rmtree(Path(spec["data_dir"]) / name, ignore_errors=True)
    return {
        "baseline_rss_mb": round(baseline / MB, 1),
        "vm_hwm_mb": round(_vm_hwm_mb(), 1),
        "runs": runs,
    }


def child_pool(spec: dict[str, Any]) -> dict[str, Any]:
    """The importer's pool of `workers` (mmjax.data.imports.build._decoder): seconds to start
    it and to decode one image row, cold (a new forkserver) then warm (the same forkserver)."""
    started = time.perf_counter()
    from mmjax.data.imports import build
    from mmjax.data.imports.decode import Preprocess
    from mmjax.data.media import Limits

    import_s = time.perf_counter() - started
    preprocess = Preprocess(IMAGE_SIZE, SAMPLE_RATE, 32000, FRAMES, False, Limits())
    task = (0, "row 1", {"image": spec["image"]}, {"image": "image"}, None, preprocess)
    out: dict[str, Any] = {"import_build_module_s": round(import_s, 3)}
    for attempt in ("cold", "warm"):
        started = time.perf_counter()
        with build._decoder(spec["workers"]) as decode_many:
            entered = time.perf_counter() - started
            list(decode_many([[task]]))
            first = time.perf_counter() - started
            list(decode_many([[task] * spec["workers"] * 4]))
            second = time.perf_counter() - started - first
        closed = time.perf_counter() - started
        out[attempt] = {
            "pool_created_s": round(entered, 3),
            "first_row_done_s": round(first, 3),
            "next_rows_s": round(second, 4),
            "closed_s": round(closed, 3),
        }
    return out


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def child_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Loader, step and loop timings of `avdigits_late` on the built and the imported
    AV-Digits, `rounds` rounds alternating which goes first."""
    import jax
    import numpy as np

    sys.path.insert(0, str(REPO))
    from benchmarks.suite_pipeline import _wait_until_idle as wait_until_idle
    from mmjax import perf
    from mmjax.config import experiment_from
    from mmjax.data import pipeline
    from mmjax.experiments import avdigits_config
    from mmjax.parallel import data_mesh, put_batch
    from mmjax.train.state import init_state, state_shardings
    from mmjax.train.step import make_train_step

    mesh = data_mesh()
    batch = spec["batch"]
    experiments = {}
    for which, name, channels in (("built", BUILT_NAME, 1), ("imported", IMPORTED_NAME, 3)):
        cfg = avdigits_config(TRAIN_MODEL)
        cfg.data.root = spec["data_dir"]
        cfg.data.name = name
        cfg.data.workers = 0
        cfg.train.batch_size = batch
        cfg.model.encoders.image.in_channels = channels
        experiments[which] = experiment_from(cfg)
    steps: dict[str, Any] = {}
    records = []
    for round_index in range(spec["rounds"]):
        order = ("built", "imported") if round_index % 2 == 0 else ("imported", "built")
        for which in order:
            exp = experiments[which]
            modalities = exp.model.modalities
            rec: dict[str, Any] = {"dataset": which, "round": round_index}
            # (a) the loader alone.
            iterator = iter(pipeline.train_dataset(exp.data, modalities, batch, 0))
            try:
                started = time.perf_counter()
                first = next(iterator)
                rec["first_batch_s"] = round(time.perf_counter() - started, 4)
                loads = []
                for _ in range(spec["batches"]):
                    started = time.perf_counter()
                    next(iterator)
                    loads.append(time.perf_counter() - started)
            finally:
                _close(iterator)
            rec["shapes"] = {k: list(v.shape) for k, v in first.items()}
            rec["next_ms_p50"] = round(1000 * statistics.median(loads), 4)
            rec["loader_samples_per_s"] = round(batch * len(loads) / sum(loads), 1)
            # (b) the jitted step alone on one device-resident batch.
            if which not in steps:
                graphdef, state = init_state(exp, mesh)
                train_step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
                started = time.perf_counter()
                state, metrics = train_step(state, put_batch(first, mesh))
                jax.block_until_ready(metrics)
                rec["first_step_s"] = round(time.perf_counter() - started, 3)
                steps[which] = [train_step, state]
            train_step, state = steps[which]
            placed = jax.block_until_ready(put_batch(first, mesh))
            holder = [state]

            def step(train_step=train_step, placed=placed, holder=holder) -> Any:
                holder[0], out = train_step(holder[0], placed)
                return out

            stats = perf.measure(step, warmup=1, iters=spec["steps"])
            rec["step_ms_p10"] = round(stats.percentile_ms(10), 3)
            rec["step_ms_p50"] = round(stats.percentile_ms(50), 3)
            rec["step_ms_p90"] = round(stats.percentile_ms(90), 3)
            # (c) the loop: next -> put_batch -> step, blocking on each step's metrics.
            iterator = iter(pipeline.train_dataset(exp.data, modalities, batch, 1))
            try:
                next(iterator)
                settle_s, settled = wait_until_idle(spec["settle_s"])
                walls, waits = [], []
                for _ in range(spec["steps"]):
                    started = time.perf_counter()
                    got = next(iterator)
                    loaded = time.perf_counter()
                    holder[0], metrics = train_step(holder[0], put_batch(got, mesh))
                    jax.block_until_ready(metrics)
                    walls.append(time.perf_counter() - started)
                    waits.append(loaded - started)
            finally:
                _close(iterator)
            steps[which][1] = holder[0]
            rec["settle_s"] = round(settle_s, 2)
            rec["settled"] = settled
            rec["loop_step_ms_p50"] = round(1000 * statistics.median(walls), 3)
            rec["loop_next_ms_p50"] = round(1000 * statistics.median(waits), 4)
            rec["loop_data_wait_fraction"] = round(sum(waits) / sum(walls), 4)
            rec["loss_finite"] = bool(np.isfinite(float(metrics["loss"])))
            rec["loadavg"] = _loadavg()
            records.append(rec)
    return {"records": records, "jax_version": jax.__version__}


CHILDREN = {"import": child_import, "pool": child_pool, "train": child_train}


def run_child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    result = CHILDREN[spec["task"]](spec)
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- measurements


def measure_throughput(
    results: Results, work: Path, files: dict[str, list], timeout: float
) -> None:
    """Each kind at workers 1 and 2, each in a fresh process: a cold then a warm import."""
    media = work / "media"
    manifests = {
        "image": _write_manifest(
            media / "images.csv",
            ("image", "label"),
            [(f"images/{n}", y) for n, y in files["image"]],
        ),
        "audio": _write_manifest(
            media / "audio.csv", ("audio", "label"), [(f"audio/{n}", y) for n, y in files["audio"]]
        ),
        "video": _write_manifest(
            media / "clips.csv",
            ("video", "label"),
            [(f"clips/{n}", y) for n, y, _ in files["video"]],
        ),
        "video_no_audio": _write_manifest(
            media / "clips_no_audio.csv",
            ("video", "audio", "label"),
            [(f"clips/{n}", "", y) for n, y, _ in files["video"]],
        ),
    }
    settings = {
        "image_size": IMAGE_SIZE,
        "sample_rate": SAMPLE_RATE,
        "audio_seconds": AUDIO_SECONDS,
        "frames": FRAMES,
    }
    for kind, manifest in manifests.items():
        for workers in (1, 2):
            spec = {
                "task": "import",
                "manifest": str(manifest),
                "name": f"{kind.replace('_', '-')}-w{workers}",
                "data_dir": str(work / "imported"),
                "workers": workers,
                "settings": settings,
                "repeat": 2,
                "delete": True,
            }
            out, max_rss_mb, wall = _run_child(spec, timeout)
            for attempt, run in zip(("cold", "warm"), out["runs"], strict=True):
                cpu = run["main_cpu_s"] + run["workers_cpu_s"]
                results.add(
                    "import_throughput",
                    kind=kind,
                    workers=workers,
                    attempt=attempt,
                    rows=run["rows"],
                    seconds=run["seconds"],
                    examples_per_s=round(run["rows"] / run["seconds"], 1),
                    cpu_s=round(cpu, 3),
                    rows_per_cpu_s=round(run["rows"] / cpu, 1) if cpu else None,
                    main_cpu_s=run["main_cpu_s"],
                    workers_cpu_s=run["workers_cpu_s"],
                    forkserver_cpu_s=run["forkserver_cpu_s"],
                    pool_start_s=run["pool_start_s"],
                    decode_wait_s=run["decode_wait_s"],
                    own_work_s=run["own_work_s"],
                    modalities=run["modalities"],
                    missing=run["missing"],
                    settings=settings,
                    process_max_rss_mb=round(max_rss_mb, 1),
                    pool_peak_rss_sum_mb=run["pool_peak_rss_sum_mb"],
                    child_wall_s=round(wall, 2),
                    loadavg_before=run["loadavg_before"],
                    loadavg=run["loadavg"],
                )


def _per_call(call: Any, calls: int) -> list[float]:
    call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def measure_decoding(results: Results, work: Path, files: dict[str, list], calls: int) -> None:
    """decode_video / decode_image / decode_audio on one file each, warm, per call."""
    from mmjax.data.media import decode_audio, decode_image, decode_video

    media = work / "media"
    clip = str(media / "clips" / files["video"][0][0])
    image = str(media / "images" / files["image"][0][0])
    audio = str(media / "audio" / files["audio"][0][0])
    length = round(AUDIO_SECONDS * SAMPLE_RATE)
    cases = {
        ("video", "frames+audio"): lambda: decode_video(
            clip, FRAMES, IMAGE_SIZE, sample_rate=SAMPLE_RATE, audio_length=length
        ),
        ("video", "frames only"): lambda: decode_video(clip, FRAMES, IMAGE_SIZE),
        ("image", "png"): lambda: decode_image(image, IMAGE_SIZE),
        ("audio", "wav"): lambda: decode_audio(audio, SAMPLE_RATE, length),
    }
    for (kind, variant), call in cases.items():
        load = _loadavg()
        times = _per_call(call, calls)
        p50 = statistics.median(times)
        results.add(
            "decode_only",
            kind=kind,
            variant=variant,
            workers=0,
            rows=calls,
            seconds=round(sum(times), 4),
            ms_per_call_p50=round(1000 * p50, 3),
            ms_per_call_min=round(1000 * min(times), 3),
            examples_per_s=round(1 / p50, 1),
            file={"video": clip, "image": image, "audio": audio}[kind],
            clip_shape=files["video"][0][2] if kind == "video" else None,
            loadavg_before=load,
        )


def _timed_python(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return time.perf_counter() - started


def measure_pool(results: Results, work: Path, files: dict[str, list], timeout: float) -> None:
    """The pool's start-up, and what its forkserver's preload imports cost."""
    image = str(work / "media" / "images" / files["image"][0][0])
    out, _, _ = _run_child({"task": "pool", "workers": 2, "image": image}, timeout)
    for attempt in ("cold", "warm"):
        results.add(
            "pool_startup",
            kind="image",
            workers=2,
            attempt=attempt,
            rows=1,
            seconds=out[attempt]["first_row_done_s"],
            **out[attempt],
        )
    imports = {
        "python": "pass",
        "media libraries (numpy, scipy.signal, PIL, soundfile, av)": (
            "import numpy, scipy.signal, PIL.Image, soundfile, av"
        ),
        "jax": "import jax",
        "mmjax.data.imports.decode (the forkserver preload)": "import mmjax.data.imports.decode",
    }
    for label, code in imports.items():
        seconds = min(_timed_python(code) for _ in range(2))
        results.add("module_import", kind=label, workers=0, rows=0, seconds=round(seconds, 3))
    # What each new worker still imports on its first row: media.py imports these lazily,
    # and the forkserver's preload (mmjax.data.imports.decode) has numpy and scipy only.
    lazy = (
        "import time, mmjax.data.imports.decode; t = time.perf_counter(); "
        "import PIL.Image, soundfile, av; print(time.perf_counter() - t)"
    )
    done = [
        subprocess.run([sys.executable, "-c", lazy], check=True, capture_output=True, text=True)
        for _ in range(2)
    ]
    seconds = min(float(d.stdout.strip().splitlines()[-1]) for d in done)
    results.add(
        "module_import",
        kind="PIL.Image, soundfile, av after the preload (each new worker's first row)",
        workers=0,
        rows=0,
        seconds=round(seconds, 3),
    )


def measure_memory(
    results: Results,
    work: Path,
    files: dict[str, list],
    row_counts: Sequence[int],
    distinct: int,
    timeout: float,
) -> None:
    """Peak RSS of audio imports of `row_counts` rows cycling over `distinct` files."""
    media = work / "media"
    audio = files["audio"][:distinct]
    settings = {"sample_rate": SAMPLE_RATE, "audio_seconds": AUDIO_SECONDS}
    for rows in row_counts:
        manifest = _write_manifest(
            media / f"audio_{rows}.csv",
            ("audio", "label"),
            [(f"audio/{audio[i % len(audio)][0]}", audio[i % len(audio)][1]) for i in range(rows)],
        )
        for workers in (1, 2):
            spec = {
                "task": "import",
                "manifest": str(manifest),
                "name": f"memory-{rows}-w{workers}",
                "data_dir": str(work / "imported"),
                "workers": workers,
                "settings": settings,
                "repeat": 1,
                "delete": True,
            }
            out, max_rss_mb, wall = _run_child(spec, timeout)
            run = out["runs"][0]
            results.add(
                "import_memory",
                kind="audio",
                workers=workers,
                rows=run["rows"],
                distinct_files=len(audio),
                seconds=run["seconds"],
                examples_per_s=round(run["rows"] / run["seconds"], 1),
                max_rss_mb=round(max_rss_mb, 1),
                vm_hwm_mb=out["vm_hwm_mb"],
                baseline_rss_mb=out["baseline_rss_mb"],
                growth_mb=round(max_rss_mb - out["baseline_rss_mb"], 1),
                workers_max_rss_mb=run["workers_max_rss_mb"],
                resource_tracker_max_rss_mb=run["resource_tracker_max_rss_mb"],
                pool_start_s=run["pool_start_s"],
                forkserver_max_rss_mb=run["forkserver_max_rss_mb"],
                pool_peak_rss_sum_mb=run["pool_peak_rss_sum_mb"],
                pool_peak_pss_sum_mb=run["pool_peak_pss_sum_mb"],
                main_cpu_s=run["main_cpu_s"],
                workers_cpu_s=run["workers_cpu_s"],
                child_wall_s=round(wall, 2),
                loadavg_before=run["loadavg_before"],
                loadavg=run["loadavg"],
            )


def _export_avdigits(root: Path, folder: Path) -> tuple[Path, dict[int, dict[str, Any]]]:
    """The built AV-Digits' train/val/test records as files and a manifest (split kept)
    -> (manifest, {manifest row index: the built record})."""
    import soundfile
    from PIL import Image

    from mmjax.config import DataConfig
    from mmjax.data.records import decode_record
    from mmjax.data.sources import open_source

    source = open_source(DataConfig(name=BUILT_NAME, root=str(root)))
    folder.mkdir(parents=True, exist_ok=True)
    rows, originals = [], {}
    for split in ("train", "val", "test"):
        records = source.open_split(split)
        for i in range(len(records)):
            record = decode_record(records[i])
            stem = f"{split}-{i:04d}"
            Image.fromarray(record["image"][:, :, 0], "L").save(folder / f"{stem}.png")
            rate = source.info["modalities"]["audio"]["sample_rate"]
            soundfile.write(folder / f"{stem}.wav", record["audio"], rate, subtype="PCM_16")
            originals[len(rows)] = record
            rows.append((f"files/{stem}.png", f"files/{stem}.wav", int(record["label"]), split))
    manifest = _write_manifest(
        folder.parent / "avdigits.csv", ("image", "audio", "label", "split"), rows
    )
    return manifest, originals


def _check_same_records(root: Path, originals: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Max differences between the imported train records and the built ones they came from."""
    import numpy as np

    from mmjax.config import DataConfig
    from mmjax.data.records import decode_record
    from mmjax.data.sources import open_source

    source = open_source(DataConfig(name=IMPORTED_NAME, root=str(root)))
    records = source.open_split("train")
    image_diff = audio_diff = label_diff = 0
    for i in range(len(records)):
        got = decode_record(records[i])
        want = originals[int(got["source_row"])]
        expected = np.repeat(want["image"].astype(np.int64), 3, axis=2)
        image_diff = max(image_diff, int(np.abs(got["image"].astype(np.int64) - expected).max()))
        audio_diff = max(
            audio_diff, int(np.abs(got["audio"].astype(np.int64) - want["audio"]).max())
        )
        label_diff = max(label_diff, abs(int(got["label"]) - int(want["label"])))
    return {
        "train_records": len(records),
        "image_max_abs_diff": image_diff,
        "audio_max_abs_diff": audio_diff,
        "label_max_abs_diff": label_diff,
    }


def measure_training(results: Results, work: Path, quick: bool, timeout: float) -> None:
    """Builds AV-Digits --small, imports its records back from files, times both."""
    from mmjax.data import import_manifest
    from mmjax.data.builders.avdigits import prepare_avdigits

    root = work / "train-data"
    started = time.perf_counter()
    prepare_avdigits(root, small=True, progress=False)
    results.add(
        "avdigits_prepare",
        kind="avdigits",
        workers=0,
        rows=0,
        seconds=time.perf_counter() - started,
    )
    manifest, originals = _export_avdigits(root, work / "avdigits-export" / "files")
    started = time.perf_counter()
    info = import_manifest(
        IMPORTED_NAME,
        manifest,
        label="label",
        data_dir=str(root),
        workers=1,
        progress=False,
        image_size=8,
        sample_rate=8000,
        audio_seconds=1.0,
    )
    seconds = time.perf_counter() - started
    rows = sum(s["num_records"] for s in info["splits"].values())
    check = _check_same_records(root, originals)
    results.add(
        "avdigits_import",
        kind="image+audio",
        workers=1,
        rows=rows,
        seconds=round(seconds, 3),
        examples_per_s=round(rows / seconds, 1),
        modalities={m: e["shape"] for m, e in info["modalities"].items()},
        same_records=check,
    )
    spec = {
        "task": "train",
        "data_dir": str(root),
        "batch": 8 if quick else TRAIN_BATCH,
        "batches": 5 if quick else 30,
        "steps": 5 if quick else 30,
        "settle_s": 2.0 if quick else 15.0,
        "rounds": 1 if quick else 2,
    }
    out, max_rss_mb, _ = _run_child(spec, timeout)
    for rec in out["records"]:
        dataset = rec.pop("dataset")
        results.add(
            "train_compare",
            kind=dataset,
            workers=0,
            rows=spec["batch"],
            model=TRAIN_MODEL,
            batch=spec["batch"],
            seconds=round(rec["step_ms_p50"] / 1000, 6),
            examples_per_s=round(spec["batch"] / (rec["step_ms_p50"] / 1000), 1),
            jax_version=out["jax_version"],
            child_max_rss_mb=round(max_rss_mb, 1),
            **rec,
        )


# ----------------------------------------------------------------------------- summary


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fmt(x: Any, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


KIND_LABELS = {
    "image": "image (PNG)",
    "audio": "audio (WAV)",
    "video": "video + its audio (MP4)",
    "video_no_audio": "video, frames only (MP4)",
}
DECODE_OF = {
    "image": ("image", "png"),
    "audio": ("audio", "wav"),
    "video": ("video", "frames+audio"),
    "video_no_audio": ("video", "frames only"),
}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _throughput_section(results: Results) -> list[str]:
    lines = [
        "## Import throughput (examples/s)",
        "",
        "Every row is a distinct real file. Warm: the second import in a fresh process; cold: "
        "the first (lazy imports; with 2 workers the forkserver's start-up too). Rows/CPU-s: "
        "rows over the CPU seconds of the importing process plus the pool's workers (a per-core "
        "rate). Decode wait: time the importing process waited for decoded rows (in-process "
        "decoding with 1 worker); own work: the rest of the import (task building, npz "
        "encoding, ArrayRecord writing, sha256, splits, info.json) minus the pool's start.",
        "",
        _row(
            "kind",
            "rows",
            "workers",
            "warm s",
            "**warm ex/s**",
            "cold s",
            "cold ex/s",
            "rows/CPU-s",
            "decode wait s",
            "own work s",
            "main CPU s",
            "workers CPU s",
            "load (1 min)",
        ),
        _row(*["---"] * 13),
    ]
    for kind, label in KIND_LABELS.items():
        for workers in (1, 2):
            warm = results.find("import_throughput", kind=kind, workers=workers, attempt="warm")
            cold = results.find("import_throughput", kind=kind, workers=workers, attempt="cold")
            if not warm or not cold:
                continue
            w, c = warm[-1], cold[-1]
            lines.append(
                _row(
                    label,
                    w["rows"],
                    workers,
                    _fmt(w["seconds"], 2),
                    f"**{_fmt(w['examples_per_s'])}**",
                    _fmt(c["seconds"], 2),
                    _fmt(c["examples_per_s"]),
                    _fmt(w["rows_per_cpu_s"]),
                    _fmt(w.get("decode_wait_s"), 2),
                    _fmt(w.get("own_work_s"), 2),
                    _fmt(w["main_cpu_s"], 2),
                    _fmt(float(w["workers_cpu_s"]), 2),
                    w["loadavg"][0],
                )
            )
    lines += [
        "",
        "Settings: images at 64 px; audio at 16 kHz, 2 s; video as 8 frames of 64 px with "
        "sample_rate 16000, so each clip's AAC track is decoded as the audio modality; "
        "'frames only': the same clips through a manifest with an empty `audio` column, so the "
        "importer decodes no audio. The issue's target: >= 50 clips/s per core for 8 frames "
        "of 64 px (workers=1 is one core for everything).",
    ]
    return lines


def _decode_section(results: Results) -> list[str]:
    lines = [
        "",
        "## Decoding alone (one file, warm, per call, in one process)",
        "",
        _row("kind", "variant", "ms/call p50", "ms/call min", "per s (p50)", "load (1 min)"),
        _row(*["---"] * 6),
    ]
    for r in results.find("decode_only"):
        lines.append(
            _row(
                r["kind"],
                r["variant"],
                _fmt(r["ms_per_call_p50"], 2),
                _fmt(r["ms_per_call_min"], 2),
                _fmt(r["examples_per_s"]),
                r["loadavg"][0],
            )
        )
    clips = [r for r in results.find("decode_only", kind="video") if r.get("clip_shape")]
    if clips:
        clip = clips[-1]["clip_shape"]
        lines += [
            "",
            f"The timed clip: {clip['width']}x{clip['height']} px, {clip['fps']} fps, 2 s, "
            "H.264 + AAC.",
        ]
    lines += [
        "",
        "The importer's cost per row beyond decoding (warm workers=1 import, ms per row, "
        "minus the decode-only p50 and min):",
        "",
    ]
    for kind, (dkind, variant) in DECODE_OF.items():
        warm = results.find("import_throughput", kind=kind, workers=1, attempt="warm")
        dec = results.find("decode_only", kind=dkind, variant=variant)
        if not warm or not dec:
            continue
        w = warm[-1]
        per_row = 1000 * w["seconds"] / w["rows"]
        p50, low = dec[-1]["ms_per_call_p50"], dec[-1]["ms_per_call_min"]
        line = (
            f"- {KIND_LABELS[kind]}: {per_row:.2f} ms/row imported, decoding {p50:.2f} ms "
            f"(p50) / {low:.2f} ms (min): {per_row - p50:.2f} to {per_row - low:.2f} ms/row more"
        )
        if w.get("decode_wait_s") is not None:
            line += (
                f"; inside the import, decoding took {1000 * w['decode_wait_s'] / w['rows']:.2f}"
                f" ms/row and the importer's own work {1000 * w['own_work_s'] / w['rows']:.2f}"
                " ms/row"
            )
        lines.append(line)
    return lines


def _pool_section(results: Results) -> list[str]:
    lines = ["", "## The pool's start-up (2 workers, one image row)", ""]
    for r in results.find("pool_startup"):
        lines.append(
            f"- {r['attempt']} (a {'new' if r['attempt'] == 'cold' else 'running'} forkserver): "
            f"pool created in {r['pool_created_s']} s, first row decoded after "
            f"{r['first_row_done_s']} s, 8 more rows in {r['next_rows_s']} s, closed after "
            f"{r['closed_s']} s (load {r['loadavg'][0]})"
        )
    for r in results.find("module_import"):
        lines.append(f"- `python -c` importing {r['kind']}: {r['seconds']} s (best of 2)")
    return lines


def _memory_section(results: Results) -> list[str]:
    lines = [
        "",
        "## Peak memory of an audio import (16 kHz, 2 s; the rows cycle over distinct files)",
        "",
        _row(
            "rows",
            "workers",
            "distinct files",
            "seconds",
            "ex/s",
            "**importing process max RSS MB**",
            "its VmHWM MB",
            "its RSS before MB",
            "growth MB",
            "each worker's max RSS MB",
            "forkserver max RSS MB",
            "pool peak RSS sum MB",
            "pool peak PSS sum MB",
            "load (1 min)",
        ),
        _row(*["---"] * 14),
    ]
    for r in results.find("import_memory"):
        pooled = r["workers"] > 1
        lines.append(
            _row(
                r["rows"],
                r["workers"],
                r["distinct_files"],
                _fmt(r["seconds"], 2),
                _fmt(r["examples_per_s"]),
                f"**{_fmt(r['max_rss_mb'])}**",
                _fmt(r.get("vm_hwm_mb")),
                _fmt(r["baseline_rss_mb"]),
                _fmt(r["growth_mb"]),
                ", ".join(_fmt(x) for x in r["workers_max_rss_mb"]) or "-",
                ", ".join(_fmt(x) for x in r["forkserver_max_rss_mb"]) or "-",
                _fmt(r["pool_peak_rss_sum_mb"]) if pooled else "-",
                _fmt(r["pool_peak_pss_sum_mb"]) if pooled else "-",
                r["loadavg"][0],
            )
        )
    lines += [
        "",
        "Max RSS: GNU time's %M for the fresh process that ran the import (its own peak; "
        "VmHWM, read by that process, agrees). Not `wait4`'s rusage as this script's child: "
        "a process inherits at exec the high-water RSS of the process it was forked from, so "
        "that reads at least this script's own ~400 MB. Growth: max RSS minus the RSS just "
        "before the import (mmjax, jax and psutil imported). The pool's processes are "
        "children of its forkserver, which that process never reaps, so they are sampled with "
        "psutil (RSS every 0.1 s, PSS every 1 s; a shorter peak can be missed); RSS counts "
        "the pages a worker shares with the forkserver, PSS divides "
        "them. The pool sums include the forkserver and multiprocessing's resource tracker. "
        "Each run is one cold import: with 2 workers its seconds include the pool's start-up.",
    ]
    return lines


def _train_section(results: Results) -> list[str]:
    lines = ["", "## Training on an imported dataset vs the built-in one", ""]
    imported = results.find("avdigits_import")
    if imported:
        r, check = imported[-1], imported[-1]["same_records"]
        lines.append(
            f"AV-Digits `--small` was built, its train/val/test records written out as 8x8 "
            f"gray PNGs and 1 s, 8 kHz WAVs, and imported back (image_size 8, sample_rate "
            f"8000, audio_seconds 1, each record's built split kept: {r['rows']} rows, "
            f"{r['seconds']} s). The {check['train_records']} imported train records equal the "
            f"built ones: max |difference| image {check['image_max_abs_diff']} (the gray "
            f"channel repeated to RGB), audio {check['audio_max_abs_diff']}, label "
            f"{check['label_max_abs_diff']}. Model `{TRAIN_MODEL}` (small CNN image encoder, "
            "in_channels 1 for the build and 3 for the import, the only difference; CNN-LSTM "
            "audio; late fusion) with AV-Digits' data settings (image and audio noise), grain "
            "with workers=0, in one fresh process; two rounds alternate which dataset goes first."
        )
    lines += [
        "",
        _row(
            "dataset",
            "round",
            "batch",
            "loader samples/s",
            "next() ms p50",
            "**step ms p50** (p10-p90)",
            "loop step ms p50",
            "loop data-wait share",
            "read-ahead settled",
            "load (1 min)",
        ),
        _row(*["---"] * 10),
    ]
    for r in results.find("train_compare"):
        lines.append(
            _row(
                r["kind"],
                r["round"],
                r["batch"],
                _fmt(r["loader_samples_per_s"]),
                _fmt(r["next_ms_p50"], 3),
                f"**{r['step_ms_p50']:.2f}** ({r['step_ms_p10']:.2f}-{r['step_ms_p90']:.2f})",
                _fmt(r["loop_step_ms_p50"], 2),
                _fmt(r["loop_data_wait_fraction"], 3),
                f"{'yes' if r['settled'] else 'no'} ({r['settle_s']:.0f} s)",
                r["loadavg"][0],
            )
        )
    lines += [
        "",
        "Loader: `next()` on `mmjax.data.pipeline.train_dataset` after one warm-up batch (its "
        "read-ahead threads running). Step: the jitted train step on one device-resident "
        "batch, state carried, blocked on every call. Loop: once grain's read-ahead buffer "
        "filled (waiting up to 15 s; 'no': it was still filling, so its threads competed "
        "with the step for the cores), next -> put_batch -> step, blocking on every step.",
    ]
    return lines


def _findings(results: Results) -> list[str]:
    lines = ["", "## Findings (computed from the records above)", ""]
    for kind, label in KIND_LABELS.items():
        one = results.find("import_throughput", kind=kind, workers=1, attempt="warm")
        two = results.find("import_throughput", kind=kind, workers=2, attempt="warm")
        if one and two:
            a, b = one[-1], two[-1]
            line = (
                f"- {label}: 2 workers give {b['examples_per_s'] / a['examples_per_s']:.2f}x "
                f"the rate of 1 ({a['examples_per_s']:.0f} -> {b['examples_per_s']:.0f} ex/s)"
            )
            if b.get("decode_wait_s") is not None:
                line += (
                    f"; with 2 workers the importing process waited {b['decode_wait_s']:.2f} s "
                    f"for decoded rows and spent {b['own_work_s']:.2f} s on its own work "
                    f"(with 1: {a['decode_wait_s']:.2f} s decoding, {a['own_work_s']:.2f} s "
                    "own work)"
                )
            lines.append(line)
    video = results.find("import_throughput", kind="video", workers=1, attempt="warm")
    if video:
        v = video[-1]
        per_cpu = v["rows_per_cpu_s"]
        lines.append(
            f"- video + audio, 8 frames of 64 px, workers=1: {per_cpu:.0f} clips per CPU "
            f"second ({'meets' if per_cpu >= 50 else 'misses'} the 50 clips/s per core target);"
            f" {v['examples_per_s']:.0f} clips/s of wall time, with a 1-minute load average "
            f"of {v['loadavg'][0]} on {v['cpu_count']} cores (the process got "
            f"{v['cpu_s'] / v['seconds']:.2f} of a core)"
        )
    cold = results.find("pool_startup", attempt="cold")
    if cold:
        lines.append(
            f"- a pool of 2 takes {cold[-1]['first_row_done_s']} s to decode its first row in a "
            "new process: its forkserver preloads `mmjax.data.imports.decode`, which imports "
            "all of mmjax (jax, flax, the models) though a worker only needs numpy, scipy, "
            "Pillow, soundfile and PyAV"
        )
    memory = results.find("import_memory")
    for workers in (1, 2):
        runs = sorted((r for r in memory if r["workers"] == workers), key=lambda r: r["rows"])
        if len(runs) >= 2:
            small, large = runs[0], runs[-1]
            lines.append(
                f"- memory, {workers} worker(s): {small['rows']:,} rows -> max RSS "
                f"{small['max_rss_mb']:.0f} MB, {large['rows']:,} rows -> "
                f"{large['max_rss_mb']:.0f} MB ({large['max_rss_mb'] - small['max_rss_mb']:+.0f}"
                f" MB for {large['rows'] / small['rows']:.0f}x the rows)"
            )
    train = results.find("train_compare")
    steps = {
        k: _median([r["step_ms_p50"] for r in train if r["kind"] == k])
        for k in ("built", "imported")
    }
    loads = {
        k: _median([r["loader_samples_per_s"] for r in train if r["kind"] == k])
        for k in ("built", "imported")
    }
    if steps["built"] and steps["imported"]:
        lines.append(
            f"- training step p50 (median over rounds): built {steps['built']:.2f} ms, imported "
            f"{steps['imported']:.2f} ms (imported/built {steps['imported'] / steps['built']:.2f}"
            f"); loader: built {loads['built']:.0f}, imported {loads['imported']:.0f} samples/s"
        )
    return lines


def write_summary(results: Results, path: Path) -> None:
    """The Markdown summary of `results` (a run's records) at `path`."""
    first = results.records[0] if results.records else {}
    quick = any(r.get("quick") for r in results.find("make_files"))
    made = {r["kind"]: r for r in results.find("make_files")}
    loads = [r["loadavg"][0] for r in results.records]
    lines = [
        f"# `mmjax data import`: throughput, memory, training speed (run {results.run_id})",
        "",
        f"git {results.revision}; {first.get('cpu_count')} CPU cores shared with other jobs "
        f"(1-minute load average during the run: {min(loads, default=0):.1f} to "
        f"{max(loads, default=0):.1f}; each record has its own); made by "
        "`tools/import_throughput.py`"
        + (" **with --quick (smoke sizes)**" if quick else "")
        + f"; every number is in `{path.with_suffix('.jsonl').name}`.",
        "",
    ]
    lines += _throughput_section(results)
    lines += _decode_section(results)
    lines += _pool_section(results)
    lines += _memory_section(results)
    lines += _train_section(results)
    lines += _findings(results)
    files = ", ".join(
        f"{r['rows']} {k} files ({r['mean_file_kb']} KB each on average) in {r['seconds']:.0f} s"
        for k, r in made.items()
    )
    lines += [
        "",
        "## How measured, caveats",
        "",
        f"- Made: {files}. Every throughput row is its own file (no reuse); the memory runs "
        "cycle over the first audio files.",
        "- Each import ran in a fresh `python` process (mmjax imported before the clock "
        "starts); seconds are the `import_manifest` call's wall time with the progress bar "
        "off: splits, decoding, shard writing, sha256 and info.json.",
        "- 2 cores, shared with other jobs (see the load averages): with 2 workers the "
        "importing process and both workers compete for them. Single timings vary by "
        "±20-40 % here; read the ratios, not the absolute numbers.",
        "- The files were just written, so they are read from the page cache.",
    ]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500, help="distinct PNG files (default 500)")
    p.add_argument("--audio", type=int, default=1000, help="distinct WAV files (default 1000)")
    p.add_argument("--clips", type=int, default=200, help="distinct MP4 clips (default 200)")
    p.add_argument(
        "--memory-rows",
        default="2000,20000",
        help="row counts of the memory imports (comma-separated; default 2000,20000)",
    )
    p.add_argument("--memory-files", type=int, default=300, help="distinct WAVs they cycle over")
    p.add_argument("--decode-calls", type=int, default=60, help="timed calls per decoder")
    p.add_argument(
        "--skip", default="", help="comma-separated: throughput,decode,pool,memory,train"
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--out-dir", default="", help="where results go (default benchmarks/results)")
    p.add_argument("--work-dir", default="", help="temporary folder (default: a new one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    p.add_argument(
        "--summary",
        default="",
        metavar="JSONL",
        help="only rewrite the Markdown summary of this results file (next to it)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.audio, args.clips = 24, 40, 12
        args.memory_rows, args.memory_files, args.decode_calls = "200,2000", 20, 10
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [CHILD_FLAG]:
        return run_child_main(argv[1])
    args = parse_args(argv)
    if args.summary:
        results = Results.load(Path(args.summary))
        write_summary(results, results.path.with_suffix(".md"))
        print(f"wrote {results.path.with_suffix('.md')}")
        return 0
    skip = set(filter(None, args.skip.split(",")))
    date = datetime.date.today().isoformat()
    if args.out_dir:
        out_dir = Path(args.out_dir)
    elif args.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="import-throughput-smoke-"))
    else:
        out_dir = REPO / "benchmarks" / "results"
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results = Results(out_dir / f"import-{date}.jsonl", run_id, _git_revision())
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="import-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"working in {work}; results -> {results.path}", flush=True)
    started = time.perf_counter()
    try:
        media = work / "media"
        files: dict[str, list] = {}
        makers = {
            "image": (make_images, media / "images", args.images),
            "audio": (make_audio, media / "audio", max(args.audio, args.memory_files)),
            "video": (make_clips, media / "clips", args.clips),
        }
        for kind, (make, folder, n) in makers.items():
            t0 = time.perf_counter()
            files[kind] = make(folder, n, args.seed)
            seconds = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in folder.iterdir())
            results.add(
                "make_files",
                kind=kind,
                workers=0,
                rows=n,
                seconds=round(seconds, 3),
                files_per_s=round(n / seconds, 1),
                mean_file_kb=round(size / n / 1024, 1),
                quick=args.quick,
            )
        if "decode" not in skip:
            measure_decoding(results, work, files, args.decode_calls)
        if "throughput" not in skip:
            measure_throughput(results, work, files, args.timeout)
        if "pool" not in skip:
            measure_pool(results, work, files, args.timeout)
        if "memory" not in skip:
            rows = [int(x) for x in args.memory_rows.split(",") if x]
            measure_memory(results, work, files, rows, args.memory_files, args.timeout)
        if "train" not in skip:
            measure_training(results, work, args.quick, args.timeout)
    finally:
        summary = results.path.with_suffix(".md")
        write_summary(results, summary)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        print(f"{time.perf_counter() - started:.0f} s; wrote {results.path} and {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
