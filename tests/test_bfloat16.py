"""bfloat16: a fusion head's matmuls run in bfloat16 (`train.compute_dtype`), and the train
suite's all-bfloat16 state traces without lossy casts."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmjax.models  # noqa: F401  (registration)
from mmjax.config import experiment_from
from mmjax.models.layers import Features
from mmjax.parallel import data_mesh, put_batch
from mmjax.registry import FUSIONS, MODELS
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import _cast_floats, _compute_in, make_train_step
from tests.jaxprs import equations

DIMS = {"audio": 5, "image": 7}


def float32_matmuls(head: nnx.Module, features: dict[str, Features], masks: dict) -> list[str]:
    """The matmuls and einsums (dot_generals) with a float32 operand in `head`'s forward and
    backward pass in the train step's bfloat16 mode: its parameters cast to bfloat16 and its
    layers computing in bfloat16 (train/step.py), as "scope: operand types"."""
    graphdef, params, rest = nnx.split(head, nnx.Param, ...)

    def loss(params: nnx.State) -> jax.Array:
        cast = nnx.merge(graphdef, _cast_floats(params, jnp.bfloat16), rest, copy=True)
        _compute_in(cast, jnp.bfloat16)
        return jnp.sum(cast(features, masks, train=True).astype(jnp.float32))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    return [
        f"{eqn.source_info.name_stack}: {', '.join(str(v.aval) for v in eqn.invars)}"
        for eqn in equations(jaxpr)
        if eqn.primitive.name == "dot_general"
        and any(v.aval.dtype == jnp.float32 for v in eqn.invars)
    ]


@pytest.mark.parametrize("name", FUSIONS.names())
def test_head_computes_in_bfloat16(name):
    """Every head's matmuls follow the compute dtype, those that multiply their own parameter
    tensors (not through flax layers) too, even on float32 features (an encoder may end in
    float32)."""
    cls = FUSIONS.get(name)
    head = cls(DIMS, cls.Config(), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    features = {
        m: Features(
            jnp.asarray(rng.standard_normal((3, 4, d)), jnp.float32),
            jnp.ones((3, 4), bool),
            jnp.asarray(rng.standard_normal((3, d)), jnp.float32),
        )
        for m, d in DIMS.items()
    }
    masks = {m: jnp.array([True, True, False]) for m in DIMS}
    assert float32_matmuls(head, features, masks) == []


def test_train_suite_bfloat16_state_updates_batch_statistics_without_a_lossy_cast():
    """The train suite's pure-bfloat16 case keeps BatchNorm statistics float32: flax computes
    their update in float32, and writing it into a bfloat16 copy is JAX's FutureWarning
    "scatter inputs have incompatible types" (an error in a future JAX). Tracing is enough."""
    from benchmarks import inputs, suite_train

    small = inputs.smoke_section(MODELS.get("avdigits_late")())
    case = suite_train.Case("avdigits_late", small, 4, image=8, audio=2000, dtype="bfloat16")
    exp = experiment_from({"model": case.section, "train": {"batch_size": 4, "steps": 10}})
    mesh = data_mesh(jax.devices()[:1])
    graphdef, state = init_state(exp, mesh)
    state = suite_train._cast(state, "bfloat16")
    host = suite_train.host_batch(case, exp.model.num_classes)
    batch = put_batch(suite_train._cast(host, "bfloat16"), mesh)
    step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        step.lower(state, batch)
