"""A sweep's copies: the grid of seeds x values, what may differ between copies, and whether
the copies fit in memory.

Copies run as one vmapped program, so they must share every shape and every static setting:
only the settings in `SWEEPABLE` may differ, and each is either traced in the step (the
optimizer's floats, OGM-GE's strength, the seed) or read by the copy's own data iterator.
"""

import dataclasses
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax.config import ConfigDict, ExperimentConfig, as_json_dict, experiment_from, set_value
from mmjax.errors import ConfigError
from mmjax.train.state import abstract_state, state_shardings

# Setting -> what it changes in a copy. Data settings need each copy's own batches.
SWEEPABLE = {
    "optim.learning_rate": "the optimizer (traced in the step)",
    "optim.weight_decay": "the optimizer (traced in the step)",
    "optim.b1": "the optimizer (traced in the step)",
    "optim.b2": "the optimizer (traced in the step)",
    "optim.grad_clip": "the optimizer (traced in the step; all > 0 or all 0)",
    "train.balance_alpha": "OGM-GE's strength (traced in the step)",
    "data.image_noise": "the copy's training and evaluation data",
    "data.audio_snr_db": "the copy's training and evaluation data",
    "data.modality_dropout": "the copy's training data",
    "data.noise_levels": "the copy's training data",
}
OPTIMIZER_KEYS = tuple(k.split(".")[1] for k in SWEEPABLE if k.startswith("optim."))
# Settings that run host-side loops between steps for one model: not in a vmapped sweep.
SINGLE_RUN_ONLY = {
    "train.balance": ("grad_blend", "its loss weights are updated between steps per model"),
    "train.utilisation_every": (None, "the utilisation probe runs one model between steps"),
    "train.fewshot_every": (None, "the few-shot probe runs one model between steps"),
    "train.eval_every": (None, "evaluation during training runs one model between steps"),
}


@dataclasses.dataclass(frozen=True)
class Copy:
    """One model of a sweep: its folder name, its settings and its whole config."""

    name: str
    seed: int
    settings: dict[str, Any]  # the --set-each values of this copy
    config: dict[str, Any]
    exp: ExperimentConfig


PROGRAMS = ("auto", "vmap", "unrolled")  # how the copies' steps form one program


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    copies: list[Copy]
    varying: tuple[str, ...]  # the SWEEPABLE settings that differ between copies
    shared_order: bool
    program: str  # "vmap" or "unrolled" (`mmjax.train.sweep.sweep_step`)

    @property
    def first(self) -> ExperimentConfig:
        return self.copies[0].exp

    def record(self) -> dict[str, Any]:
        """What the sweep's checkpoints and sweep.json record: the copies and their configs."""
        return {
            "shared_order": self.shared_order,
            "copies": [
                {"name": c.name, "seed": c.seed, "settings": c.settings, "config": c.config}
                for c in self.copies
            ],
        }

    def traced(self) -> dict[str, np.ndarray]:
        """The per-copy values [S] of the settings traced in the step: the seed (OGM-GE's
        noise) and each varying optimizer or balance setting."""
        values = {"seed": np.array([c.seed for c in self.copies], np.int32)}
        for key in self.varying:
            if not key.startswith("data."):
                values[key] = np.array([c.settings[key] for c in self.copies], np.float32)
        return values


def parse_set_each(items: Sequence[str]) -> dict[str, list[str]]:
    """`key=v1,v2,...` strings (the CLI's `--set-each`) -> {key: [value text, ...]}."""
    parsed: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        values = [v.strip() for v in text.split(",")]
        if not sep or not key.strip() or not all(values):
            raise ConfigError(f"--set-each expects path.to.key=value1,value2,..., got {item!r}")
        parsed[key.strip()] = values
    return parsed


def _check_settings(set_each: Mapping[str, Sequence[Any]], shared_order: bool) -> None:
    for key, values in set_each.items():
        if key == "train.seed":
            raise ConfigError("--set-each train.seed: give the seeds with --seeds")
        if key not in SWEEPABLE:
            raise ConfigError(
                f"--set-each {key}: copies of a sweep may differ only in "
                f"{', '.join(SWEEPABLE)} (and train.seed, with --seeds); other settings change "
                "the model's shapes or the program, so sweep them as separate runs"
            )
        if shared_order and key.startswith("data."):
            raise ConfigError(f"--set-each {key} changes each copy's batches: drop --shared-order")
        if not values:
            raise ConfigError(f"--set-each {key}: give at least one value")


def single_run_settings(exp: ExperimentConfig) -> dict[str, Any]:
    """The settings of `exp` that a sweep cannot hold ({"train.balance": "grad_blend"})."""
    out = {}
    for key, (bad, _) in SINGLE_RUN_ONLY.items():
        value = getattr(exp.train, key.split(".")[1])
        if (value == bad) if bad is not None else value:
            out[key] = value
    return out


def _check_single_run_only(exp: ExperimentConfig) -> None:
    if settings := single_run_settings(exp):
        key, value = next(iter(settings.items()))
        raise ConfigError(
            f"{key}={value} is not available in a sweep ({SINGLE_RUN_ONLY[key][1]}); train "
            "such runs one at a time with `mmjax train`"
        )


def _copy_name(seed: int, settings: Mapping[str, Any]) -> str:
    parts = [f"seed{seed}"] + [f"{k.split('.')[-1]}={v}" for k, v in settings.items()]
    return "-".join(parts)


def plan_sweep(
    config: ConfigDict | Mapping[str, Any],
    seeds: Sequence[int],
    set_each: Mapping[str, Sequence[Any]],
    *,
    shared_order: bool = False,
    program: str = "auto",
) -> SweepPlan:
    """The copies of a sweep: every seed with every combination of the `set_each` values
    (values may be literals' text, as `--set` takes them). With `shared_order` every copy
    reads the batch order of the first copy (its config says so in `train.data_seed`).
    `program` "auto" is "unrolled" on CPU and "vmap" on GPU and TPU."""
    if program not in PROGRAMS:
        raise ConfigError(f"--program {program!r}: one of {', '.join(PROGRAMS)}")
    if program == "auto":
        program = "unrolled" if jax.default_backend() == "cpu" else "vmap"
    _check_settings(set_each, shared_order)
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))}: a seed is given twice")
    base = as_json_dict(config)
    keys = list(set_each)
    copies: list[Copy] = []
    order_seed = None
    for seed, values in itertools.product(seeds, itertools.product(*set_each.values())):
        cfg = ConfigDict(base)
        for key, value in zip(keys, values, strict=True):
            try:
                set_value(cfg, key, value)
            except ConfigError as err:
                raise ConfigError(f"--set-each {key}={value}: {err}") from None
        copy_config = as_json_dict(cfg)
        train = copy_config.setdefault("train", {})  # a config file may leave these out
        train["seed"] = int(seed)
        if shared_order:
            if order_seed is None:
                order_seed = experiment_from(copy_config).train.order_seed
            train["data_seed"] = order_seed
        try:
            exp = experiment_from(copy_config)
        except ConfigError as err:
            raise ConfigError(f"copy {_copy_name(seed, dict(zip(keys, values)))}: {err}") from None
        settings = {k: _setting(exp, k) for k in keys}
        copies.append(
            Copy(_copy_name(exp.train.seed, settings), exp.train.seed, settings, copy_config, exp)
        )
    names = [c.name for c in copies]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"--set-each: a value is given twice (copies {', '.join(twice)})")
    varying = tuple(k for k in keys if len({repr(c.settings[k]) for c in copies}) > 1)
    clips = {c.exp.optim.grad_clip > 0 for c in copies}
    if len(clips) > 1:
        raise ConfigError(
            "--set-each optim.grad_clip: the values must all be > 0 or all 0 (clipping on for "
            "some copies and off for others is another program)"
        )
    _check_single_run_only(copies[0].exp)
    return SweepPlan(copies, varying, shared_order, program)


def _setting(exp: ExperimentConfig, key: str) -> Any:
    section, field = key.split(".")
    return getattr(getattr(exp, section), field)


def _itemsize(dtype: Any) -> int:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return 8  # threefry's two uint32 words
    return np.dtype(dtype).itemsize


def per_copy_bytes(exp: ExperimentConfig, mesh: jax.sharding.Mesh) -> int:
    """The bytes one copy needs on one device at least: its train state (parameters, optimizer
    moments, statistics) and its gradients and updates (twice the trainable parameters), as laid
    out on `mesh`. Activations come on top."""
    graphdef, abstract = abstract_state(exp)
    model, _ = nnx.merge(graphdef, abstract)
    trainable = nnx.state(model, model.trainable())

    def device_bytes(tree: nnx.State) -> int:
        shardings = state_shardings(tree, mesh, exp.parallel)
        sizes = jax.tree.map(
            lambda x, s: int(np.prod(s.shard_shape(x.shape))) * _itemsize(x.dtype),
            tree,
            shardings,
        )
        return sum(jax.tree.leaves(sizes))

    return device_bytes(abstract) + 2 * device_bytes(trainable)


def free_device_bytes(device: jax.Device) -> int:
    """Free memory of `device`: its allocator's limit minus use, or for a CPU device its share
    of the host's available memory."""
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available // max(len(jax.local_devices()), 1)


def check_memory(exp: ExperimentConfig, copies: int, mesh: jax.sharding.Mesh) -> None:
    """A ConfigError, before anything is compiled or allocated, when `copies` copies of the
    model's state and gradients alone would not fit in a device's free memory."""
    need = copies * per_copy_bytes(exp, mesh)
    device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    free = free_device_bytes(device)  # only this process's devices report their memory
    if need > free:
        gib = 2**30
        raise ConfigError(
            f"a sweep of {copies} copies needs at least {need / gib:.1f} GiB per device for "
            f"the copies' train state and gradients ({need / copies / 2**20:.1f} MiB each, "
            f"activations not counted), more than the {free / gib:.1f} GiB free on {device}: "
            "give fewer --seeds or --set-each values"
        )
