"""The train state: model and optimizer split into a static graphdef and an array State."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.compile_options import init_compiler_options
from mmjax.config import ExperimentConfig, ParallelConfig
from mmjax.models import build_model
from mmjax.parallel import fsdp_shardings
from mmjax.train.optim import make_optimizer

DEFAULT_PARALLEL = ParallelConfig()


def build_model_and_optimizer(
    exp: ExperimentConfig, seed: int | jax.Array | None = None
) -> tuple[nnx.Module, nnx.Optimizer]:
    """The model and its optimizer, built eagerly on the default device (unsharded), from
    `seed` (default `exp.train.seed`; a traced seed builds the same values)."""
    seed = exp.train.seed if seed is None else seed
    model = build_model(exp.model, rngs=nnx.Rngs(jax.random.key(seed)))
    tx = make_optimizer(exp.optim, exp.train.steps)
    return model, nnx.Optimizer(model, tx, wrt=model.trainable())


def abstract_state(exp: ExperimentConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graphdef and shape/dtype-only state, without allocating any parameter."""
    return nnx.split(nnx.eval_shape(lambda: build_model_and_optimizer(exp)))


def state_shardings(
    state: nnx.State, mesh: jax.sharding.Mesh, parallel: ParallelConfig = DEFAULT_PARALLEL
) -> nnx.State:
    """A NamedSharding per leaf of `state` (arrays or shape structs): parameters, batch
    statistics and optimizer moments alike are split over the mesh's `fsdp` axis when they
    have at least `parallel.fsdp_min_size` elements (`mmjax.parallel.fsdp_spec`), else
    replicated; all are replicated over `data`. The fsdp size is the mesh's, not
    `parallel.fsdp`, so a state can be laid out on any mesh (a single-device one for eval)."""
    return fsdp_shardings(state, mesh, parallel.fsdp_min_size)


def state_initializer(
    exp: ExperimentConfig, mesh: jax.sharding.Mesh
) -> tuple[nnx.GraphDef, Callable[[int], nnx.State]]:
    """(graphdef, seed -> state): one compiled program that builds the model and optimizer
    from a seed directly with their shardings under `exp.parallel` (no host-side copy, no
    replicated intermediate)."""
    graphdef, abstract = abstract_state(exp)
    init = jax.jit(
        lambda seed: nnx.split(build_model_and_optimizer(exp, seed))[1],
        out_shardings=state_shardings(abstract, mesh, exp.parallel),
        compiler_options=init_compiler_options(),
    )
    return graphdef, lambda seed: init(jnp.asarray(seed, jnp.int32))


def init_state(exp: ExperimentConfig, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) of a fresh run from `exp.train.seed` (`state_initializer`)."""
    graphdef, init = state_initializer(exp, mesh)
    return graphdef, init(exp.train.seed)
