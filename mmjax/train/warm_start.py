"""Start a fresh run from published encoder weights and from modules of another run's
checkpoint (fine-tuning after pretraining)."""

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mmjax.config import ExperimentConfig, experiment_from
from mmjax.errors import ConfigError
from mmjax.pretrained import place_pretrained
from mmjax.train.state import state_shardings
from mmjax.train.workdir import read_experiment, restore_trained

# Parameters, batch statistics and frozen tables; optimizer moments and RNG streams start fresh.
COPIED = nnx.Not(nnx.RngState)


def _submodule(model: nnx.Module, path: str, which: str) -> nnx.Module:
    """The module at dotted `path` ("encoders.audio", "fusion") of `model`."""
    node = model
    for part in path.split("."):
        try:
            if isinstance(node, nnx.Dict | nnx.List):
                node = node[int(part) if part.isdigit() else part]
            else:
                node = getattr(node, part)
        except (AttributeError, KeyError, IndexError, ValueError):
            node = None
        if not isinstance(node, nnx.Module):
            top = sorted(k for k, v in vars(model).items() if isinstance(v, nnx.Module))
            raise ConfigError(
                f"train.init_modules: {path!r} is not a module of the {which} model "
                f"(its top-level modules: {', '.join(top)}; nest with dots: 'encoders.audio')"
            )
    return node


def _shapes(module: nnx.Module) -> dict[tuple, tuple[int, ...]]:
    return {path: np.shape(leaf) for path, leaf in nnx.to_flat_state(nnx.state(module, COPIED))}


def warm_start(
    graphdef: nnx.GraphDef, state: nnx.State, exp: ExperimentConfig, mesh: jax.sharding.Mesh
) -> nnx.State:
    """`state` with published weights in the encoders `exp.model.pretrained` names, then
    `exp.train.init_modules` copied from `exp.train.init_from`'s latest checkpoint."""
    model, optimizer = nnx.merge(graphdef, state)
    initial_weights(model, exp, mesh)
    new_state = nnx.state((model, optimizer))
    return jax.device_put(new_state, state_shardings(new_state, mesh, exp.parallel))


def initial_weights(model: nnx.Module, exp: ExperimentConfig, mesh: jax.sharding.Mesh) -> None:
    """Put a fresh run's starting weights into `model`: the catalog encoders of
    `exp.model.pretrained`, then the modules `exp.train.init_from` provides."""
    if exp.train.init_from:
        for m, name in exp.model.pretrained:
            if any(
                p in ("encoders", f"encoders.{m}") or p.startswith(f"encoders.{m}.")
                for p in exp.train.init_modules
            ):
                raise ConfigError(
                    f"train.init_modules copies encoders.{m} from {exp.train.init_from}, but "
                    f"model.pretrained.{m} already loads {name!r} into it; name the modules to "
                    "copy (e.g. 'encoders.image', 'fusion') or drop one of the two"
                )
    place_pretrained(model, exp.model)
    if exp.train.init_from:
        _copy_modules(model, exp, mesh)


def _copy_modules(model: nnx.Module, exp: ExperimentConfig, mesh: jax.sharding.Mesh) -> None:
    """Copy `exp.train.init_modules` from `exp.train.init_from`; every copied module must match
    the source in names and shapes."""
    source = Path(exp.train.init_from)
    source_exp = experiment_from(read_experiment(source)["config"])
    _, source_graphdef, source_state = restore_trained(source, source_exp, mesh)
    source_model, _ = nnx.merge(source_graphdef, source_state)
    for path in exp.train.init_modules:
        src = _submodule(source_model, path, f"source ({source})")
        dst = _submodule(model, path, "new")
        src_shapes, dst_shapes = _shapes(src), _shapes(dst)
        if src_shapes != dst_shapes:
            diff = sorted(
                "/".join(map(str, k)) + f": {src_shapes.get(k)} -> {dst_shapes.get(k)}"
                for k in set(src_shapes) | set(dst_shapes)
                if src_shapes.get(k) != dst_shapes.get(k)
            )
            raise ConfigError(
                f"train.init_modules: {path!r} of {source} does not fit the new model "
                f"(source -> new: {'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''})"
            )
        nnx.update(dst, nnx.state(src, COPIED))
