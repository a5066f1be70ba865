"""One run per workdir: a lock that the kernel drops when its holder ends, however it ends."""

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax.errors import ConfigError

LOCK_FILE = "run.lock"


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold `workdir/run.lock` for the body; a second run on the workdir is refused with a
    ConfigError naming the holder's host and PID.

    The lock is an `flock`, which the kernel releases when its process exits, even by SIGKILL,
    so a killed run never blocks its own resume. In a multi-process run process 0 holds it for
    the group and tells the other processes whether it got it.
    """
    path = Path(workdir) / LOCK_FILE
    fd, holder = _acquire(path) if jax.process_index() == 0 else (None, "")
    got = fd is not None or jax.process_index() != 0
    if jax.process_count() > 1:
        got = bool(multihost_utils.broadcast_one_to_all(np.int32(got)))
    if not got:
        raise ConfigError(
            f"--workdir {workdir} is in use by another run ({holder or 'seen by process 0'}, "
            f"holding {path}): wait for it to end or stop it, or give this run a new --workdir"
        )
    try:
        yield
    finally:
        if fd is not None:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _acquire(path: Path) -> tuple[int | None, str]:
    """(the locked file's descriptor, "") or (None, a description of the process holding it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        return None, _describe(text)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "processes": jax.process_count(),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return fd, ""


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        group = f", process 0 of {holder['processes']}" if holder["processes"] > 1 else ""
        return f"PID {holder['pid']} on host {holder['host']} since {holder['started']}{group}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"
