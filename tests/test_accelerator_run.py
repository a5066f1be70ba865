"""The accelerator run (README.md, Benchmarks): benchmarks/accelerator_wheels.sh carries what
the device image lacks, benchmarks/run_accelerator.sh installs it and runs every suite in one
budget, and a run stopped at any moment keeps what it measured. Cheap checks only: nothing
here compiles a model."""

import collections
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from benchmarks import harness, report

ROOT = Path(__file__).resolve().parents[1]
WHEELS_SCRIPT = ROOT / "benchmarks" / "accelerator_wheels.sh"
RUN_SCRIPT = ROOT / "benchmarks" / "run_accelerator.sh"
# The device machine: CPython 3.12 on Linux x86-64 (for requirement markers).
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lists() -> dict[str, list[str]]:
    """accelerator_wheels.sh --list: 'wheel' (name==version), 'left-out' and 'device' names."""
    done = subprocess.run(
        ["bash", str(WHEELS_SCRIPT), "--list"], capture_output=True, text=True, check=True
    )
    lists = collections.defaultdict(list)
    for line in done.stdout.splitlines():
        kind, value = line.split()
        lists[kind].append(value)
    return lists


def _requires(name: str, extra: str) -> list[Requirement]:
    """What distribution `name` requires on the device's Python: its base requirements for
    extra "", else those that only its `extra` adds."""
    try:
        lines = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name} is not installed here, so its requirements cannot be read")
    found = []
    for line in lines:
        requirement = Requirement(line)
        marker = requirement.marker
        for_extra = marker is not None and "extra" in str(marker)
        if for_extra == bool(extra) and (
            marker is None or marker.evaluate(DEVICE_MARKERS | {"extra": extra})
        ):
            found.append(requirement)
    return found


def test_the_wheels_are_exactly_what_the_device_image_lacks():
    """Walk mmjax's runtime requirements (and the bench extra's) through the installed
    packages' metadata; what the image has ends a path, except for the extras asked of it.
    Every package reached that the image lacks must be pinned (or deliberately left out),
    every pin must be reached, and each pin must satisfy every requirement naming it."""
    lists = _lists()
    device = {_normal(n) for n in lists["device"]}
    pins = {_normal(p.split("==")[0]): p.split("==")[1] for p in lists["wheel"]}
    left_out = {_normal(n) for n in lists["left-out"]}
    assert len(pins) == len(lists["wheel"]), "a package is pinned twice"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["bench"]]
    queue = [(Requirement(r), "mmjax") for r in wanted]
    lacking: dict[str, list[tuple[Requirement, str]]] = collections.defaultdict(list)
    walked: set[tuple[str, str]] = set()
    while queue:
        requirement, wanted_by = queue.pop()
        name = _normal(requirement.name)
        if name not in device:
            lacking[name].append((requirement, wanted_by))
        if name in left_out:
            continue
        extras = set(requirement.extras) | ({""} if name not in device else set())
        for extra in extras - {e for n, e in walked if n == name}:
            walked.add((name, extra))
            queue += [(r, requirement.name) for r in _requires(requirement.name, extra)]
    assert set(lacking) == set(pins) | left_out, (
        f"the image lacks {sorted(lacking)}; pinned {sorted(pins)}, left out {sorted(left_out)}"
    )
    for name, version in pins.items():
        for requirement, wanted_by in lacking[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{name}=={version} is pinned, {wanted_by} wants {requirement}"
            )


def _top_level_names(dist: importlib.metadata.Distribution) -> set[str]:
    names = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first in ("..", "__pycache__") or first.endswith((".dist-info", ".pth")):
            continue
        if len(file.parts) > 1 or first.endswith((".py", ".so")):
            names.add(first.split(".")[0])
    return names


# The child Pythons' path finder: modules of the packages the device image lacks are found
# only in the folder the wheels go to (as pip --target fills it there), else not at all.
SITECUSTOMIZE = """
import atexit, importlib.machinery, json, os, sys

HIDDEN = set(json.loads(os.environ["HIDE_MODULES"]))
SITE = os.environ["WHEEL_SITE"]
PathFinder = importlib.machinery.PathFinder


class DeviceImage:
    @staticmethod
    def find_spec(name, path=None, target=None):
        spec = PathFinder.find_spec(name, path, target)
        if spec is None or name.partition(".")[0] not in HIDDEN:
            return spec
        places = [spec.origin or "", *(spec.submodule_search_locations or [])]
        return spec if all(p.startswith(SITE) for p in places if p) else None

    find_distributions = staticmethod(PathFinder.find_distributions)
    invalidate_caches = staticmethod(PathFinder.invalidate_caches)


sys.meta_path[sys.meta_path.index(PathFinder)] = DeviceImage


@atexit.register
def report():
    loaded = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())
              if n.partition(".")[0] in HIDDEN}
    with open(os.environ["LOADED_LOG"], "a") as f:
        f.write(json.dumps(loaded) + "\\n")
"""


def test_dry_run_starts_every_suite_with_only_the_device_packages_and_the_wheels(tmp_path):
    """run_accelerator.sh --dry-run imports mmjax and every suite and lists their plans, in
    Pythons that can import nothing of what the image lacks except the carried packages."""
    lists = _lists()
    device = {_normal(n) for n in lists["device"]}
    carried = {_normal(p.split("==")[0]) for p in lists["wheel"]}
    site = tmp_path / "site"
    hidden, shown = set(), set()
    for dist in importlib.metadata.distributions():
        name = _normal(dist.metadata["Name"])
        names = _top_level_names(dist)
        (shown if name in device or name == "mmjax" else hidden).update(names)
        if name in carried:  # what pip --target makes of its wheel
            for file in dist.files or []:
                source = Path(dist.locate_file(file))
                if file.parts[0] != ".." and source.is_file():
                    (site / file).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, site / file)
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    loaded_log = tmp_path / "loaded.jsonl"
    env = os.environ | {
        "PYTHON": sys.executable,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{site}",
        "HIDE_MODULES": json.dumps(sorted(hidden - shown)),
        "WHEEL_SITE": str(site),
        "LOADED_LOG": str(loaded_log),
    }
    done = subprocess.run(
        [str(RUN_SCRIPT), str(tmp_path / "out"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    planned = dict(p.split("=") for p in lines[lines.index(_line(lines, "estimates:"))].split()[1:])
    for suite in harness.SUITES:
        if suite not in planned:  # only the pipeline may be missing: no dataset here
            assert suite == "pipeline" and "AV-Digits" in _line(lines, f"{suite}: cannot run")
    assert _line(lines, "budget:") and _line(lines, f"  {next(iter(planned))}: ")
    loaded = {}
    for line in loaded_log.read_text().splitlines():
        loaded |= json.loads(line)
    grain = loaded.get("grain")
    assert grain and grain.startswith(str(site)), f"grain from {grain}"
    assert not {"av", "soundfile"} & set(loaded), "a left-out package was imported"


def _line(lines: list[str], start: str) -> str:
    found = [line for line in lines if line.startswith(start)]
    assert found, f"no line starting {start!r}"
    return found[-1]


def test_a_killed_run_keeps_every_finished_record_and_renders(tmp_path):
    """A run killed (SIGKILL, no clean-up) right after two records keeps both on disk, a
    half-written last line is left out, and the table is made from the JSONL afterwards."""
    code = (
        "import os, signal, sys\n"
        "from benchmarks import harness\n"
        "ctx = harness.Context(smoke=True, out_dir=sys.argv[1])\n"
        "for batch in (2, 4):\n"
        "    ctx.record('checkpoint', model='m', variant='raw', batch=batch, dtype='float32')\n"
        "print(ctx.results_path, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    results = Path(done.stdout.strip())
    with results.open("a") as f:
        f.write('{"suite": "checkpoint", "model": "cut off')
    records = report.read_jsonl(results)
    assert [r["batch"] for r in records] == [2, 4]
    report.main([str(results)])
    assert "| m | raw | 4 | float32 |" in results.with_suffix(".md").read_text()
    results.write_text('{"broken\n{}\n')
    with pytest.raises(ValueError, match="line 1"):
        report.read_jsonl(results)


def test_estimates_come_from_the_newest_run_that_made_each_measurement():
    def rec(run: str, time: str, model: str, **fields) -> dict:
        key = {"suite": "train", "model": model, "variant": "v", "batch": 8, "dtype": "float32"}
        return key | {"run_id": run, "time": f"2026-01-01T00:{time}+00:00"} | fields

    timing = {"lower_s": 1.0, "compile_s": 2.0, "step_ms_p50": 500.0, "iters": 4}
    records = [
        rec("old", "00:00", "a", **timing),
        rec("old", "00:50", "b"),
        rec("new", "10:00", "a", **timing),
        {"suite": "peak", "run_id": "new", "time": "2026-01-01T00:10:20+00:00"},
        rec("new", "10:30", "b"),
        rec("new", "10:40", "b"),
    ]
    seconds = harness.durations(records)
    key = lambda model: harness.Planned("train", model, "v", 8).key
    assert seconds[key("a")] == 1.0 + 2.0 + 6 * 0.5  # first of its run: from its fields
    assert seconds[key("b")] == 20.0  # median of 30 and 10 s, the peak record skipped


def test_a_suite_that_records_what_its_plan_does_not_list_is_an_error(tmp_path, monkeypatch):
    planned = [harness.Planned("extract", "m", "forward", 2)]

    def run(ctx, batches):
        for batch in batches:
            ctx.record("extract", model="m", variant="forward", batch=batch, dtype="float32")

    ctx = harness.Context(smoke=True, out_dir=tmp_path)
    for batches, ok in (((2,), True), ((2, 4), False), ((), False)):
        suite = types.SimpleNamespace(plan=lambda ctx: planned, run=lambda c, b=batches: run(c, b))
        monkeypatch.setattr(harness, "suite_module", lambda name, s=suite: s)
        if ok:
            harness.run(["extract"], ctx, log=lambda _: None)
        else:
            with pytest.raises(RuntimeError, match="plan"):
                harness.run(["extract"], ctx, log=lambda _: None)


@pytest.mark.parametrize("script", [WHEELS_SCRIPT, RUN_SCRIPT])
def test_the_scripts_parse_and_refuse_unknown_options(script, tmp_path):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    args = [str(tmp_path)] if script == RUN_SCRIPT else []
    done = subprocess.run(["bash", str(script), *args, "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
