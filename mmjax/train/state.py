"""The train state: model and optimizer split into a static graphdef and an array State."""

import jax
from flax import nnx

from mmjax.config import ExperimentConfig
from mmjax.models import build_model
from mmjax.parallel import replicated
from mmjax.train.optim import make_optimizer


def _model_and_optimizer(exp: ExperimentConfig) -> tuple[nnx.Module, nnx.Optimizer]:
    model = build_model(exp.model, rngs=nnx.Rngs(exp.train.seed))
    tx = make_optimizer(exp.optim, exp.train.steps)
    return model, nnx.Optimizer(model, tx, wrt=model.trainable())


def abstract_state(exp: ExperimentConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graphdef and shape/dtype-only state, without allocating any parameter."""
    return nnx.split(nnx.eval_shape(lambda: _model_and_optimizer(exp)))


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh) -> nnx.State:
    """Every leaf replicated over the mesh (data parallelism)."""
    return jax.tree.map(lambda _: replicated(mesh), state)


def init_state(exp: ExperimentConfig, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """Build the model and optimizer directly with their shardings (no host-side copy)."""
    graphdef, abstract = abstract_state(exp)
    init = jax.jit(
        lambda: nnx.split(_model_and_optimizer(exp))[1],
        out_shardings=state_shardings(abstract, mesh),
    )
    return graphdef, init()
