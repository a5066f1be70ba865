"""Performance measurement: timers, FLOP counts, the peak-FLOP/s table and MFU.

FLOP convention: one multiply-add is 2 FLOPs. The model FLOPs of a program are the FLOPs of
its matrix products and convolutions, counted from the shapes in its jaxpr (`matmul_flops`);
elementwise work (activations, norms, the optimizer's update) is not counted, as in MaxText
and Levanter. The counts follow these formulas, per primitive:

- dot_general  lhs [*batch, *free_l, *contract] x rhs [*batch, *contract, *free_r]:
  2 * prod(batch) * prod(free_l) * prod(contract) * prod(free_r)
- conv_general_dilated  out [B, O, *spatial_out], kernel [O, I/groups, *window]:
  2 * prod(out) * prod(kernel) / O        (each output sums I/groups x window products)
- scan (LSTM, GRU): the body's count times the length; cond: the dearest branch.
  A while loop's trip count is unknown to the jaxpr: its body counts once (flagged).

Closed forms that follow (tested in tests/test_perf.py): a BiLSTM layer over L steps of
width d_in with h units costs 16 * L * h * (d_in + h) forward; a Transformer encoder of
l layers, width d and L tokens costs 2 * N * L + 4 * l * L^2 * d, N its matmul parameters;
a KxK conv with C_in -> C_out channels on an H_out x W_out map 2 * H_out * W_out * C_in *
C_out * K^2. Backward passes are counted from the same jaxpr (about 2x forward).

XLA's `cost_analysis()` is reported next to the count as a cross-check. It counts elementwise
ops too (so it reads higher for small or normalisation-heavy models) and a scan's body once
(so it reads far lower for RNNs); benchmarks flag ratios outside [0.9, 1.1].
"""

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense (no sparsity) peak FLOP/s per chip, by dtype, from the vendors' data sheets (NVIDIA's
# figures "with sparsity" halved; the v4i, which has none, as JAX's Pallas TPU info gives it,
# jax.experimental.pallas.tpu). float32 on NVIDIA is TF32 (XLA's default matmul precision);
# on TPU the default precision runs float32 matmuls as single bfloat16 passes, so float32 uses
# the bfloat16 peak. Keys are matched against `jax.Device.device_kind`, which spells the chips
# "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "TPU v4",
# "TPU v4 lite" (v4i), "TPU v5 lite" (v5e), "TPU v5" (v5p) and "TPU v6 lite" (v6e); the
# marketing names ("TPU v5e", ...) are accepted too. See `table_peak` for the matching rule.
_PEAKS: dict[str, dict[str, float]] = {
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v4 lite": {"bfloat16": 137e12, "float32": 137e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
    "TPU v6e": {"bfloat16": 918e12, "float32": 918e12},
}


def table_peak(device_kind: str, dtype: str) -> float | None:
    """Peak FLOP/s of one chip of `device_kind` (jax.Device.device_kind) for `dtype`, or None
    for a device the table does not know (every CPU: measure it with `matmul_peak`).

    The longest key found in `device_kind` (case-insensitive) wins, so "TPU v5 lite" is a v5e,
    not a v5p ("TPU v5"), and "NVIDIA H100 PCIe" is not an SXM H100."""
    kind = device_kind.lower()
    found = [key for key in _PEAKS if key.lower() in kind]
    if not found:
        return None
    return _PEAKS[max(found, key=len)].get(dtype)


@dataclasses.dataclass(frozen=True)
class Stats:
    """Wall times of repeated calls, in seconds, in call order."""

    times: tuple[float, ...]

    def percentile_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.times, q))

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def summary(self) -> dict[str, float]:
        """step_ms p10 / p50 / p90 and the number of timed calls."""
        return {
            "step_ms_p10": self.percentile_ms(10),
            "step_ms_p50": self.percentile_ms(50),
            "step_ms_p90": self.percentile_ms(90),
            "iters": len(self.times),
        }


def measure(call: Callable[[], Any], *, warmup: int = 2, iters: int = 10) -> Stats:
    """Time `call()` `iters` times after `warmup` untimed calls; each call is blocked on
    (`jax.block_until_ready`) so asynchronous dispatch cannot hide work."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - started)
    return Stats(tuple(times))


@dataclasses.dataclass(frozen=True)
class Compiled:
    """A jitted function lowered and compiled for one set of argument shapes."""

    executable: Any  # jax.stages.Compiled: call it with the same argument structure
    lower_s: float
    compile_s: float
    xla_flops: float | None


def compile_timed(jitted: Any, *args: Any) -> Compiled:
    """Lower and compile `jitted` (a `jax.jit` function) for `args`, timing each phase."""
    started = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    executable = lowered.compile()
    compiled_at = time.perf_counter()
    return Compiled(
        executable, lowered_at - started, compiled_at - lowered_at, xla_flops(executable)
    )


def xla_flops(executable: Any) -> float | None:
    """XLA's FLOP estimate of a compiled program (None where the backend gives none)."""
    try:
        analysis = executable.cost_analysis()
    except Exception:  # backends without a cost model raise various types
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Model FLOPs of one call; `exact` is False when a while loop's body was counted once."""

    flops: float
    exact: bool


def matmul_flops(fn: Callable[..., Any], *args: Any) -> FlopCount:
    """Model FLOPs (dots and convolutions, 2 per multiply-add) of `fn(*args)`, counted from
    its jaxpr by the formulas in this module's docstring; nothing is executed. A jitted `fn`
    is traced through its Python function: JAX refuses to trace a jit that carries compiler
    options (mmjax's model programs, `compile_options.py`) inside another trace."""
    if hasattr(fn, "lower") and hasattr(fn, "__wrapped__"):  # a `jax.jit` function
        fn = fn.__wrapped__
    closed = jax.make_jaxpr(fn)(*args)
    flops, exact = _jaxpr_flops(closed.jaxpr)
    return FlopCount(flops, exact)


def _eqn_flops(eqn: Any) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        lhs = eqn.invars[0].aval.shape
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        contract = math.prod(lhs[d] for d in lhs_contract)
        # prod(out) = prod(batch) * prod(free_l) * prod(free_r)
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contract
    if name == "conv_general_dilated":
        kernel = eqn.invars[1].aval.shape
        out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(kernel) / out_features
    return 0.0


def _sub_jaxprs(value: Any) -> list[Any]:
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jax.extend.core.Jaxpr):
        return [value]
    if isinstance(value, list | tuple):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _jaxpr_flops(jaxpr: Any) -> tuple[float, bool]:
    total, exact = 0.0, True
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        name = eqn.primitive.name
        if name == "cond":
            counts = [_jaxpr_flops(b) for b in _sub_jaxprs(eqn.params["branches"])]
            total += max(c for c, _ in counts)
            exact = exact and all(e for _, e in counts)
            continue
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                flops, sub_exact = _jaxpr_flops(sub)
                times = eqn.params["length"] if name == "scan" else 1
                total += times * flops
                exact = exact and sub_exact and name != "while"
    return total, exact


def matmul_peak(dtype: str = "float32", *, n: int = 2048, iters: int = 10) -> float:
    """Best FLOP/s of an n x n x n `jnp.matmul` on the default device, measured now: the
    denominator of CPU MFU (a CPU has no data-sheet peak that XLA can reach)."""
    a = jnp.ones((n, n), dtype) / n
    matmul = jax.jit(jnp.matmul)
    stats = measure(lambda: matmul(a, a), warmup=2, iters=iters)
    return 2.0 * n**3 / min(stats.times)


def mfu(flops_per_step: float, seconds_per_step: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None without a peak)."""
    if not peak or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


def model_cost(config: dict[str, Any], batch: dict[str, np.ndarray], *, iters: int = 10) -> dict:
    """Parameter counts (all, and the fusion head's), XLA's forward FLOPs per example and the
    median train-step seconds of the experiment `config` on `batch` (placed on this
    process's mesh), after one untimed step."""
    from flax import nnx

    from mmjax.config import experiment_from
    from mmjax.parallel import data_mesh, put_batch
    from mmjax.train.state import init_state, state_shardings
    from mmjax.train.step import make_train_step

    exp = experiment_from(config)
    mesh = data_mesh()
    graphdef, state = init_state(exp, mesh)
    model, _ = nnx.merge(graphdef, state)
    count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    placed = put_batch(batch, mesh)
    model_graph, params = nnx.split(model)
    forward = jax.jit(lambda p, b: nnx.merge(model_graph, p)(b, train=False))
    flops = xla_flops(forward.lower(params, placed).compile())
    step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
    holder = {"state": state}

    def one_step() -> Any:
        holder["state"], metrics = step(holder["state"], placed)
        return metrics

    times = measure(one_step, warmup=1, iters=iters)
    examples = len(batch["label"])
    return {
        "params": count(model),
        "fusion_params": count(model.fusion),
        "forward_flops": flops / examples if flops is not None else float("nan"),
        "step_s": times.median,
    }
