"""One framework's side of the peer suite, in a process of its own.

The peer suite once timed mmjax and PyTorch in one process. There each slowed the other:
the image CNN's mmjax step took 2.72-2.89 ms before PyTorch was imported, 2.99-3.35 ms after
PyTorch had run and 3.37-4.30 ms with PyTorch's rounds interleaved (benchmarks/NOTES.md), and
PyTorch ran under mmjax's malloc settings (`mmjax/host_heap.py`), which no PyTorch user has.
A `Worker` builds one framework's implementations of a peer model in a spawned process (a
fresh interpreter: nothing of the parent's frameworks is carried over) and times them on
command, so that the suite interleaves rounds of processes that each run as their users run.
The mmjax process takes the peers' configs and batches from `peer_models`, so it never
imports torch.

A PyTorch process keeps glibc's own malloc settings, as PyTorch users have them: it starts
with `MALLOC_ARENA_MAX` at glibc's default for 64-bit systems (8 per core), which makes
`import mmjax` (the peers' configs come from it) leave glibc alone. With `mmjax_heap` it runs
under mmjax's settings instead, to separate what the heap setting gives from what the code
does: they made PyTorch's BiLSTM train step 28.3 ms against 39.3 (benchmarks/NOTES.md).
"""

import contextlib
import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from mmjax.errors import MmjaxError

Calls = dict[str, dict[str, Callable[[], Any]]]  # {variant: {implementation: call}}


def _block(out: Any) -> None:
    if hasattr(out, "detach"):
        out.detach().sum().item()
    else:
        import jax

        jax.block_until_ready(out)


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds of CPU process `pid`'s live threads have run (Linux `schedstat`; a thread
    that ends takes its share with it), or None without /proc."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        # a thread that ended meanwhile has nothing to add
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
            total += int(stat.read().split()[0])
    return total


def _timed_call(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    _block(call())
    return time.perf_counter() - started


def round_times(call: Callable[[], Any], count: int, warmup_s: float = 0.0) -> list[float]:
    """Seconds of each of `count` calls of `call` in a row, after untimed calls for `warmup_s`
    seconds (at least one where `warmup_s` > 0)."""
    deadline = time.perf_counter() + warmup_s
    while time.perf_counter() < deadline:
        _block(call())
    return [_timed_call(call) for _ in range(count)]


def _mmjax_calls(name: str, batch_size: int) -> tuple[Calls, dict[str, Any]]:
    """mmjax's train step and forward pass of peer `name` on one device, and what the record
    needs of them (compile seconds, train-step model FLOPs)."""
    import jax
    from flax import nnx

    from benchmarks import peer_models
    from mmjax import perf
    from mmjax.compile_options import model_compiler_options
    from mmjax.config import experiment_from
    from mmjax.parallel import data_mesh, put_batch
    from mmjax.train.state import init_state, state_shardings
    from mmjax.train.step import LeafTrainStep

    exp = experiment_from(
        {"model": peer_models.PEERS[name](), "train": {"batch_size": batch_size, "steps": 1000}}
    )
    mesh = data_mesh(jax.devices()[:1])
    graphdef, state = init_state(exp, mesh)
    batch = put_batch(peer_models.numpy_batch(name, batch_size), mesh)
    step = LeafTrainStep(graphdef, state_shardings(state, mesh), mesh)  # as the loop runs it
    leaves = step.leaves(state)
    flops = perf.matmul_flops(step.jitted, leaves, batch).flops
    compiled = perf.compile_timed(step.jitted, leaves, batch)
    inputs = {k: v for k, v in batch.items() if k != "label"}
    forward = jax.jit(
        lambda leaves, x: nnx.merge(graphdef, step.state(leaves))[0](x, train=False),
        compiler_options=model_compiler_options(),
    )
    holder = [leaves]

    def train() -> Any:
        holder[0], metrics = compiled.executable(holder[0], batch)
        return metrics["loss"]

    calls = {
        "train_step": {"mmjax": train},
        "forward": {"mmjax": lambda: forward(holder[0], inputs)},
    }
    return calls, {"compile_s": compiled.compile_s, "flops": flops}


def _torch_calls(name: str, batch_size: int) -> tuple[Calls, dict[str, Any]]:
    """Eager PyTorch's and torch.compile's train step and forward pass of peer `name`, on
    every core."""
    import torch

    from benchmarks import peer_models, peer_torch

    torch.set_num_threads(os.cpu_count() or 1)
    batch = peer_torch.torch_batch(peer_models.numpy_batch(name, batch_size))
    eager, to_compile = peer_torch.torch_model(name), peer_torch.torch_model(name)
    calls: Calls = {}
    for variant, build in (
        ("train_step", peer_torch.torch_train_step),
        ("forward", peer_torch.torch_forward),
    ):
        # Each step function is built once: its optimizer lives across calls.
        eager_step, compiled_step = build(eager), peer_torch.compiled(build(to_compile))
        calls[variant] = {
            "eager": lambda f=eager_step: f(batch),
            "compile": lambda f=compiled_step: f(batch),
        }
    return calls, {"threads": torch.get_num_threads()}


BUILDERS = {"mmjax": _mmjax_calls, "torch": _torch_calls}


def _serve(conn: Connection, framework: str, name: str, batch_size: int) -> None:
    """The child's loop: build, report, then answer ("first"|"median", variant, impl, calls,
    warm-up seconds) with seconds until ("stop",)."""
    try:
        calls, info = BUILDERS[framework](name, batch_size)
        conn.send(("ok", info))
        while (command := conn.recv())[0] != "stop":
            kind, variant, impl, count, warmup_s = command
            times = round_times(calls[variant][impl], count, warmup_s)
            conn.send(("ok", times[0] if kind == "first" else statistics.median(times)))
    except BaseException:  # reported in the parent, with the child's traceback
        conn.send(("error", traceback.format_exc()))


class Worker:
    """`framework` ("mmjax" or "torch") serving peer `name` at `batch_size` from a child
    process, under mmjax's malloc settings (`mmjax_heap`, always for mmjax) or glibc's;
    `first` and `median` run calls there and return their seconds."""

    def __init__(self, framework: str, name: str, batch_size: int, *, mmjax_heap: bool = False):
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self.framework = framework
        self._process = context.Process(
            target=_serve, args=(child_end, framework, name, batch_size), daemon=True
        )
        glibc_heap = framework == "torch" and not mmjax_heap
        env = {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))} if glibc_heap else {}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # a spawned child starts with the parent's environment
        try:
            self._process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    del os.environ[key]
                else:
                    os.environ[key] = value
        child_end.close()
        self.info: dict[str, Any] = self._reply()

    @property
    def pid(self) -> int:
        return self._process.pid

    def first(self, variant: str, impl: str) -> float:
        """Seconds of one call (the first one compiles)."""
        self._conn.send(("first", variant, impl, 1, 0.0))
        return self._reply()

    def median(self, variant: str, impl: str, calls: int, warmup_s: float = 0.0) -> float:
        """Median seconds of `calls` calls in a row, after untimed calls for `warmup_s` seconds."""
        self._conn.send(("median", variant, impl, calls, warmup_s))
        return self._reply()

    def wait_idle(self, timeout: float = 0.1) -> None:
        """Return once this worker's threads have stopped running, or after `timeout` seconds.

        PyTorch's OpenMP threads spin on for about 10 ms after a call returns (3-9 ms of CPU
        after the image CNN's train step on the development VM; XLA's threads stop at once).
        Without this wait that CPU lands on the next worker's first calls, and in the suite's
        order only eager PyTorch (after mmjax) never met it."""
        deadline = time.perf_counter() + timeout
        last = cpu_ns(self.pid)
        while last is not None and time.perf_counter() < deadline:
            time.sleep(0.002)
            now = cpu_ns(self.pid)
            if now == last:
                return
            last = now

    def _reply(self) -> Any:
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise MmjaxError(
                f"the peer suite's {self.framework} process ended (exit code "
                f"{self._process.exitcode})"
            ) from None
        if status == "error":
            raise MmjaxError(f"the peer suite's {self.framework} process failed:\n{value}")
        return value

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):  # a child that failed has closed its end
                self._conn.send(("stop",))
            self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()
