"""bfloat16 mode (`train.compute_dtype`): a fusion head's matmuls run in bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmjax.models  # noqa: F401  (registration)
from mmjax.models.layers import Features
from mmjax.registry import FUSIONS
from mmjax.train.step import _cast_floats, _compute_in

DIMS = {"audio": 5, "image": 7}


def _dot_generals(jaxpr: jax.extend.core.Jaxpr) -> list[jax.extend.core.JaxprEqn]:
    found = []
    for eqn in jaxpr.eqns:
        for inner in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _dot_generals(inner)
        if eqn.primitive.name == "dot_general":
            found.append(eqn)
    return found


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
        for eqn in _dot_generals(jaxpr)
        if any(v.aval.dtype == jnp.float32 for v in eqn.invars)
    ]


@pytest.mark.parametrize("name", ["low_rank_fusion", "multiplicative"])
def test_head_computes_in_bfloat16(name):
    """The heads that multiply their own parameter tensors (not through flax layers) follow
    the compute dtype too, even on float32 features (an encoder may end in float32)."""
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
