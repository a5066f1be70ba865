"""The optimizer: global-norm clipping that takes the norm the train step already has."""

import jax
import numpy as np
import optax
import pytest

from mmjax.config import OptimConfig, experiment_from
from mmjax.parallel import data_mesh, put_batch
from mmjax.registry import MODELS
from mmjax.train.optim import clip_by_global_norm, make_optimizer
from mmjax.train.state import init_state
from mmjax.train.step import train_step_function
from tests.batches import avdigits_batches
from tests.jaxprs import primitives
from tests.trees import assert_same_leaves


def _tree() -> dict[str, jax.Array]:
    w, b = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(w, (4, 3)), "b": jax.random.normal(b, (3,))}


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipped, passed through
def test_clip_equals_optax_with_or_without_a_given_norm(max_norm):
    tree = _tree()
    expected, _ = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
    clip = clip_by_global_norm(max_norm)
    state = clip.init(tree)
    assert state == optax.EmptyState()  # optax's state: checkpoints keep their structure
    for given in ({}, {"global_norm": optax.tree.norm(tree)}):
        clipped, _ = clip.update(tree, state, **given)
        assert_same_leaves(clipped, expected)


def test_clip_scales_by_the_norm_it_is_given():
    tree = _tree()
    clipped, _ = clip_by_global_norm(1.0).update(tree, optax.EmptyState(), global_norm=8.0)
    for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(tree), strict=True):
        np.testing.assert_allclose(a, b / 8.0, rtol=1e-6)


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_the_optimizer_accepts_the_norm_with_or_without_clipping(grad_clip):
    tree = _tree()
    tx = make_optimizer(OptimConfig(grad_clip=grad_clip), 10)
    updates, _ = tx.update(tree, tx.init(tree), tree, global_norm=optax.tree.norm(tree))
    assert jax.tree.structure(updates) == jax.tree.structure(tree)


def test_the_steps_update_does_not_compute_the_norm_again():
    """The update runs in the step's lax.cond (skipped on a non-finite loss or norm), where XLA
    does not reuse the norm computed outside it: the step hands the norm to the clipping, so
    the update branch has no reduction left (AdamW's arithmetic is elementwise)."""
    exp = experiment_from({"model": MODELS.get("avdigits_late")(), "train": {"steps": 10}})
    mesh = data_mesh(jax.devices()[:1])
    graphdef, state = init_state(exp, mesh)
    batch = put_batch(next(iter(avdigits_batches(1, 8, 8000))), mesh)
    step = train_step_function(graphdef, mesh)
    jaxpr = jax.make_jaxpr(lambda s, b: step(s, b, None, None))(state, batch).jaxpr
    (cond,) = (eqn for eqn in jaxpr.eqns if eqn.primitive.name == "cond")
    skip, update = (primitives(branch.jaxpr) for branch in cond.params["branches"])
    assert "reduce_sum" in primitives(jaxpr)  # the norm, outside the cond
    assert "add" in update and "reduce_sum" not in update
    assert not skip - {"pjit"}  # the skip branch returns the state as it is
