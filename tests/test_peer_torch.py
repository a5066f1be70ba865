"""The PyTorch peers of benchmarks/peer_torch.py mirror their mmjax models exactly: same
parameter shapes, and with mmjax's weights copied in, the same logits, loss and update."""

import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for benchmarks/
from benchmarks import peer_torch as pt  # noqa: E402
from benchmarks.peer_models import INPUT_SHAPES, PEERS, numpy_batch  # noqa: E402
from mmjax.config import OptimConfig, model_config_from  # noqa: E402
from mmjax.models import build_model  # noqa: E402
from mmjax.train.optim import make_optimizer  # noqa: E402
from mmjax.train.step import training_loss  # noqa: E402


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "label"}


@pytest.mark.parametrize("name", sorted(PEERS))
def test_parameter_shapes_match_mmjax(name):
    section = PEERS[name]()
    cfg = model_config_from(section)
    abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
    expected = sorted(tuple(v.shape) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    model = pt.torch_model(name)
    assert pt.parameter_shapes(model) == expected
    assert sum(p.numel() for p in model.parameters()) == sum(int(np.prod(s)) for s in expected)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_forward_and_train_step(name):
    torch.manual_seed(0)
    batch = numpy_batch(name, 4)
    for m, shape in INPUT_SHAPES[name].items():
        assert batch[m].shape == (4, *shape) and batch[f"{m}_mask"].all()
    model = pt.torch_model(name)
    tb = pt.torch_batch(batch)
    assert pt.torch_forward(model)(tb).shape == (4, 10)
    before = [p.detach().clone() for p in model.parameters()]
    loss = pt.torch_train_step(model, total_steps=1)(tb)  # one step: no warm-up, full lr
    assert loss.shape == () and torch.isfinite(loss)
    assert model.training
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def _random_mmjax_model(section: dict, seed: int = 0) -> nnx.Module:
    """The mmjax model of `section` with random values in every parameter and BatchNorm
    statistic (non-trivial means, variances, scales and biases, so every one of them shows in
    the outputs). Filled in from `nnx.eval_shape`: much faster than running the initialisers."""
    cfg = model_config_from(section)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(state):
        x = var.get_value()
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            value = jax.random.key(0)
        elif not np.issubdtype(x.dtype, np.floating):
            value = np.zeros(x.shape, x.dtype)  # rng counts
        elif path[-1] in ("var", "scale"):
            value = rng.uniform(0.5, 1.5, x.shape)
        elif path[-1] == "embedding":
            value = rng.standard_normal(x.shape)
        elif len(x.shape) >= 2:  # kernels [..., in, out]: unit-variance outputs
            value = rng.standard_normal(x.shape) / np.sqrt(np.prod(x.shape[:-1]))
        else:  # biases, BatchNorm means
            value = rng.uniform(-0.5, 0.5, x.shape)
        var.set_value(jax.numpy.asarray(value, x.dtype))
    return nnx.merge(graphdef, state)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_eval_logits_match_mmjax(name):
    """With mmjax's values copied in, eval-mode logits agree: conv and Linear layouts,
    BatchNorm on running statistics, pooling, the log-mel front end, the LSTM gate order and
    its (f c) input order, the text BiLSTM's backward pass over each sequence reversed within
    its length, masked means and the late-concat fusion."""
    jm = _random_mmjax_model(PEERS[name]())
    model = pt.torch_model(name)
    pt.load_mmjax_weights(model, jm)
    batch = numpy_batch(name, 8, seed=3)
    expected = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(jm, _inputs(batch)))
    got = pt.torch_forward(model)(pt.torch_batch(batch)).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_image_cnn_train_step_matches_mmjax():
    """One train step of each framework from the same weights: same loss (BatchNorm on batch
    statistics), same clipped gradients, same AdamW update and running means. Fusion dropout
    is 0 here so both compute the same function."""
    section = PEERS["image_cnn"]()
    section["fusion"]["dropout"] = 0.0
    jm = _random_mmjax_model(section)
    model = pt.MultimodalModel(section)
    pt.load_mmjax_weights(model, jm)
    batch = numpy_batch("image_cnn", 8, seed=5)

    @nnx.jit
    def step(m, optimizer, batch):
        (loss, _), grads = nnx.value_and_grad(training_loss, has_aux=True)(m, batch)
        optimizer.update(m, grads)
        clipped, _ = optax.clip_by_global_norm(OptimConfig().grad_clip).update(grads, None)
        return loss, clipped

    optimizer = nnx.Optimizer(jm, make_optimizer(OptimConfig(), 1), wrt=nnx.Param)
    loss, grads = step(jm, optimizer, batch)
    got = pt.torch_train_step(model, total_steps=1)(pt.torch_batch(batch))
    np.testing.assert_allclose(float(got), float(loss), rtol=1e-5)

    expected = pt.MultimodalModel(section)
    pt.load_mmjax_weights(expected, grads)  # clip_grad_norm_ leaves the clipped grads in .grad
    for (key, p), g in zip(model.named_parameters(), expected.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), g.detach().numpy(), atol=1e-6, err_msg=key)
    # new parameters: Adam's first step is about lr * sign(grad), sensitive to rounding only
    # where a gradient is near eps
    pt.load_mmjax_weights(expected, jm)
    for (key, p), q in zip(model.named_parameters(), expected.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), atol=1e-4, err_msg=key)
        assert np.mean(np.abs(p.detach().numpy() - q.detach().numpy()) < 1e-6) > 0.99, key
    # running means follow the same momentum (flax 0.9 = torch 0.1); running variances differ
    # by n / (n - 1): torch keeps the unbiased batch variance, flax the biased one
    for key, stat in model.state_dict().items():
        if key.endswith("running_mean"):
            np.testing.assert_allclose(
                stat.numpy(), expected.state_dict()[key].numpy(), atol=1e-6, err_msg=key
            )
