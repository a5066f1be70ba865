"""Start `mmjax train` in child processes, as a user or a cluster scheduler would."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mmjax.config import ConfigDict, apply_overrides, load_config_file

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


TINY_CONFIG = "configs/avdigits_late.py:tiny"


def _settings(root: Path, steps: int, settings: tuple[str, ...]) -> tuple[str, ...]:
    return (f"data.root={root}", f"train.steps={steps}", *settings)


def tiny_args(root: Path, steps: int, *settings: str) -> list[str]:
    """`mmjax train` arguments for the tiny AV-Digits late-fusion run on `root`."""
    args = ["--config", TINY_CONFIG, "--quiet"]
    for item in _settings(root, steps, settings):
        args += ["--set", item]
    return args


def tiny_config(root: Path, steps: int, *settings: str) -> ConfigDict:
    """The config of `tiny_args(root, steps, *settings)`, for a run in this process."""
    return apply_overrides(load_config_file(TINY_CONFIG), _settings(root, steps, settings))


def preempted_step(stderr: str) -> int:
    """The step `mmjax train` reports stopping at after a SIGTERM."""
    return int(stderr.split("preempted (SIGTERM) at step ")[1].split(":")[0])


def _with_device_count(xla_flags: str, devices: int) -> str:
    """`xla_flags` (this process's, so a child compiles as it does) with `devices` CPU devices."""
    kept = [f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device")]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def start_train(
    workdir: Path,
    args: list[str],
    *,
    devices: int = 4,
    env: dict[str, str] | None = None,
    command: str = "train",
) -> subprocess.Popen:
    """`python -m mmjax.cli COMMAND --workdir WORKDIR ARGS` on `devices` fake CPU devices."""
    child_env = {
        **os.environ,
        "XLA_FLAGS": _with_device_count(os.environ.get("XLA_FLAGS", ""), devices),
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mmjax.cli", command, "--workdir", str(workdir), *args],
        cwd=REPO,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def saved_steps(workdir: Path) -> list[int]:
    """The finished checkpoint steps in `workdir` (Orbax renames a step's folder when done)."""
    folder = Path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `condition()` every 2 ms; fail naming `what` (and the process's stderr if it ended)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)
