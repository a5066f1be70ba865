"""Multi-process (multi-host) start-up on JAX's own runtime, `jax.distributed`.

Every process runs the same `mmjax train` command. The cluster comes from, in order: the
command's flags, the MMJAX_COORDINATOR / MMJAX_NUM_PROCESSES / MMJAX_PROCESS_ID environment
variables, or JAX's cluster detection (Cloud TPU, SLURM, Open MPI, ...) when `auto` is asked
for. JAX's coordination service then watches every process: if one dies, the others are ended
by the runtime within the heartbeat timeout instead of waiting forever in a collective.
"""

import multiprocessing
import os
import re

import jax

from mmjax.errors import ConfigError

ENV_COORDINATOR = "MMJAX_COORDINATOR"
ENV_NUM_PROCESSES = "MMJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MMJAX_PROCESS_ID"
ENV_AUTO = "MMJAX_DISTRIBUTED"  # "auto": let JAX detect the cluster (as --distributed)
ENV_HEARTBEAT = "MMJAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_S = 100  # jax.distributed's own default


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {text!r}") from None


def _check_coordinator(address: str, field: str) -> str:
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"{field} must be HOST:PORT (port 1-65535), got {address!r}")
    return address


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    heartbeat_timeout_s: int | None = None,
) -> bool:
    """Join the multi-process cluster if one is described; return whether one was joined.

    Must run before anything touches a JAX device. A grain worker process never joins
    (grain#802: it would re-run the start-up of its parent).
    """
    if multiprocessing.parent_process() is not None:
        return False
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR, "").strip() or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    auto = auto or os.environ.get(ENV_AUTO, "").strip().lower() == "auto"
    if heartbeat_timeout_s is None:
        heartbeat_timeout_s = _env_int(ENV_HEARTBEAT) or DEFAULT_HEARTBEAT_S
    if heartbeat_timeout_s < 1:
        raise ConfigError(f"--heartbeat-timeout must be >= 1 second, got {heartbeat_timeout_s}")
    given = {
        "--coordinator": coordinator,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    if not auto and all(v is None for v in given.values()):
        return False
    if not auto and any(v is None for v in given.values()):
        missing = [flag for flag, v in given.items() if v is None]
        raise ConfigError(
            f"a multi-process run needs --coordinator, --num-processes and --process-id "
            f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); missing "
            f"{', '.join(missing)}. Use --distributed to let JAX detect the cluster"
        )
    if coordinator is not None:
        _check_coordinator(coordinator, "--coordinator")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None and not 0 <= process_id < (num_processes or 1 << 30):
        raise ConfigError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes,
            process_id,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    except (RuntimeError, ValueError) as err:  # no cluster found, already started, bad peer
        raise ConfigError(f"could not start the multi-process run: {err}") from err
    return True
