"""Pure train and eval steps, jit-compiled once over the split (graphdef, state).

The train step can average the gradients of equal micro-batches before its one optimizer
update (`grad_accum_steps`), run the forward and backward pass in bfloat16 on a cast of the
float32 parameters (`compute_dtype`), and never changes the state when the loss or the gradient
is NaN or infinite (metric `nonfinite`).
"""

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mmjax.compile_options import model_compiler_options
from mmjax.config import COMPUTE_DTYPES
from mmjax.errors import ConfigError
from mmjax.parallel import batch_sharded, replicated
from mmjax.train.balance import OGMGE, modulate, ogm_coefficients

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# (trainable params, other model state, batch) -> (gradients, other model state, metrics)
S = TypeVar("S")  # a train state: its nnx.State, or that State's leaves
MicroStep = Callable[[nnx.State, nnx.State, Batch], tuple[nnx.State, nnx.State, Metrics]]


def _inputs(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k != "label"}


def training_loss(
    model: nnx.Module, batch: Batch, ogm: OGMGE | None = None
) -> tuple[jax.Array, tuple[jax.Array, dict[str, jax.Array]]]:
    """(total loss, (logits [B, C], {term: scalar})): weighted cross-entropy on float32 logits
    plus every auxiliary loss the model reports (reconstruction, contrastive, adversarial).
    With `ogm`, the terms also hold OGM-GE's coefficient per modality, `balance_coeff_<m>`
    (from the model's predictions from each modality alone, outside the gradient). `ogm` is
    positional-or-keyword: nnx's transforms pass every bound argument by position."""
    inputs = _inputs(batch)
    features, masks = model.encode(inputs, train=True)
    logits, aux = model.fuse(inputs, features, masks, train=True)
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    total = model.classification_weight * ce + sum(aux.values())
    terms = {"cross_entropy": ce, **aux}
    if model.unimodal_heads is not None:  # the heads' losses, weighted by loss_weights
        losses = model.head_losses(features, masks, logits, batch["label"])
        weights = model.loss_weights[...]
        total = total + (weights[0] - 1) * model.classification_weight * ce
        total = total + jnp.sum(weights[1:] * losses[1:])
        terms |= {f"unimodal_ce_{m}": loss for m, loss in zip(model.modalities, losses[1:])}
    if ogm is not None:
        alone = jax.lax.stop_gradient(model.unimodal_logits(features, masks))
        coefficients = ogm_coefficients(alone, batch["label"], masks, ogm.alpha)
        terms |= {f"balance_coeff_{m}": k for m, k in coefficients.items()}
    return total, (logits, terms)


def _cast_floats(tree: nnx.State | Batch, dtype: jnp.dtype) -> nnx.State | Batch:
    """`tree` with every floating-point array cast to `dtype`; integer, bool and key arrays
    and BatchNorm statistics (see `_compute_in`) kept."""

    def cast(x: jax.Array | nnx.BatchStat) -> jax.Array | nnx.BatchStat:
        if isinstance(x, nnx.BatchStat) or not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return x.astype(dtype) if x.dtype != dtype else x

    return jax.tree.map(cast, tree, is_leaf=lambda x: isinstance(x, nnx.BatchStat))


def _compute_in(model: nnx.Module, dtype: jnp.dtype) -> None:
    """Make every flax layer of `model` (each module with a `param_dtype`: Linear, Conv, Embed,
    the norms, attention, LSTM cells) compute in `dtype`, like `nnx.Linear(dtype=dtype)`, even
    where float32 constants of the model code meet its input; BatchNorm normalises with its
    statistics cast to `dtype` and updates them in float32."""
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "param_dtype"):
            module.dtype = dtype


def _written(new: nnx.State, cast: nnx.State, original: nnx.State) -> nnx.State:
    """The model state after a forward pass that ran on its `cast` copy: each leaf the pass
    wrote (BatchNorm statistics, RNG counts) in its original dtype, every other leaf the
    `original` itself, so frozen weights never round-trip through the compute dtype."""

    def pick(new: jax.Array, cast: jax.Array, original: jax.Array) -> jax.Array:
        return original if new is cast else new.astype(original.dtype)

    return jax.tree.map(pick, new, cast, original)


def _micro_step(model_def: nnx.GraphDef, dtype: jnp.dtype, ogm: OGMGE | None) -> MicroStep:
    """The gradient of `training_loss` on one (micro-)batch [b, ...], computed in `dtype`.

    Inside the differentiated function the float params, model state (BatchNorm statistics
    aside) and batch inputs are cast to `dtype` and every flax layer computes in it, so the
    gradients (the cast's transpose) come back in the params' float32; the loss is taken on
    float32 logits. The state the forward pass writes (BatchNorm statistics, RNG counts)
    keeps its dtypes, so the train state's dtypes never change. With float32 nothing is
    cast: the model runs in the dtypes its state and the batch already have.
    """

    def loss_fn(
        params: nnx.State, rest: nnx.State, batch: Batch
    ) -> tuple[jax.Array, tuple[nnx.State, Metrics]]:
        if dtype == jnp.float32:  # the state's and the batch's own dtypes, uncast
            cast_params, cast_rest, cast_batch = params, rest, batch
        else:
            cast_params, cast_rest = _cast_floats(params, dtype), _cast_floats(rest, dtype)
            cast_batch = _cast_floats(batch, dtype)
        model = nnx.merge(model_def, cast_params, cast_rest, copy=True)
        if dtype != jnp.float32:
            _compute_in(model, dtype)
        loss, (logits, terms) = training_loss(model, cast_batch, ogm=ogm)
        _, _, new_rest = nnx.split(model, model.trainable(), ...)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            **terms,
        }
        return loss, (_written(new_rest, cast_rest, rest), metrics)

    def step(
        params: nnx.State, rest: nnx.State, batch: Batch
    ) -> tuple[nnx.State, nnx.State, Metrics]:
        (_, (rest, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, batch)
        return grads, rest, metrics

    return step


def _micro_batches(batch: Batch, k: int, mesh: jax.sharding.Mesh) -> Batch:
    """[B, ...] -> [k, B/k, ...]; micro-batch i holds rows i, k + i, 2k + i, ... .

    Each device's contiguous block of rows holds whole groups of k, so the reshape stays on
    device and every micro-batch is spread over all devices like the batch (axis 1 sharded).
    """
    size = next(iter(batch.values())).shape[0]
    shards = size // batch_sharded(mesh).shard_shape((size,))[0]
    if size % k or (size // k) % shards:
        raise ConfigError(
            f"train.grad_accum_steps ({k}) must split the batch of {size} into equal "
            f"micro-batches divisible by the {shards} batch shards of the mesh"
        )
    sharding = NamedSharding(mesh, PartitionSpec(None, *batch_sharded(mesh).spec))

    def split(x: jax.Array) -> jax.Array:
        micro = x.reshape(size // k, k, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(micro, sharding)

    return {key: split(x) for key, x in batch.items()}


def _accumulate(micro_step: MicroStep, k: int, mesh: jax.sharding.Mesh) -> MicroStep:
    """`micro_step` over k micro-batches of the batch [B, ...] in a `lax.scan`: the mean
    gradient, the model state after every micro-batch's forward pass in turn, mean metrics."""

    def step(
        params: nnx.State, rest: nnx.State, batch: Batch
    ) -> tuple[nnx.State, nnx.State, Metrics]:
        def body(
            carry: tuple[nnx.State, nnx.State], micro_batch: Batch
        ) -> tuple[tuple[nnx.State, nnx.State], Metrics]:
            grad_sum, rest = carry
            grads, rest, metrics = micro_step(params, rest, micro_batch)
            return (jax.tree.map(jnp.add, grad_sum, grads), rest), metrics

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grad_sum, rest), metrics = jax.lax.scan(
            body, (zeros, rest), _micro_batches(batch, k, mesh)
        )
        grads = jax.tree.map(lambda g: g / k, grad_sum)
        return grads, rest, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    return step


def _update(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation | None
) -> Callable[[nnx.State, nnx.State, nnx.State, jax.Array], nnx.State]:
    """(state, gradients, model state written by the forward pass, the gradients' global norm)
    -> the state after one optimizer update with those gradients, by the optimizer's own
    transformation or `tx` (the same transformation with traced hyperparameters: a sweep's
    learning rate per copy). The norm goes to the clipping, which would otherwise compute it
    again (`optim.clip_by_global_norm`)."""

    def update(
        state: nnx.State, grads: nnx.State, rest: nnx.State, grad_norm: jax.Array
    ) -> nnx.State:
        model, optimizer = nnx.merge(graphdef, state)
        nnx.update(model, rest)
        if tx is not None:
            optimizer.tx = tx
        optimizer.update(model, grads, global_norm=grad_norm)
        return nnx.state((model, optimizer))

    return update


def _compute_dtype(name: str) -> jnp.dtype:
    if name not in COMPUTE_DTYPES:
        raise ConfigError(
            f"train.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}"
        )
    return jnp.dtype(name)


TrainStep = Callable[
    [nnx.State, Batch, optax.GradientTransformation | None, OGMGE | None],
    tuple[nnx.State, Metrics],
]


def train_step_function(
    graphdef: nnx.GraphDef,
    mesh: jax.sharding.Mesh,
    *,
    grad_accum_steps: int = 1,
    compute_dtype: str = "float32",
) -> TrainStep:
    """The pure, unjitted train step (state, batch [B, ...], tx, ogm) -> (new state, metrics).

    One optimizer update per step, with the mean gradient of `grad_accum_steps` equal
    micro-batches [B/k, ...] (the whole batch's when 1) computed in `compute_dtype`, by the
    optimizer's own transformation or `tx`. A step whose loss or gradient norm is NaN/inf
    skips the update (a `lax.cond`), returning the state unchanged, and reports metric
    `nonfinite` 1 (else 0). With `ogm`, each encoder's gradient is modulated by OGM-GE
    (`mmjax.train.balance`) before the update, for the optimizer steps before `ogm.until`,
    from the micro-batches' mean coefficients. `make_train_step` jits it for one run;
    `mmjax.train.sweep` vmaps it over copies.
    """
    if grad_accum_steps < 1:
        raise ConfigError(f"train.grad_accum_steps must be >= 1, got {grad_accum_steps}")
    dtype = _compute_dtype(compute_dtype)

    def train_step(
        state: nnx.State,
        batch: Batch,
        tx: optax.GradientTransformation | None,
        ogm: OGMGE | None,
    ) -> tuple[nnx.State, Metrics]:
        model, optimizer = nnx.merge(graphdef, state)  # shares `state`'s variables: read only
        model_def, params, rest = nnx.split(model, model.trainable(), ...)
        grad_fn = _micro_step(model_def, dtype, ogm)
        if grad_accum_steps > 1:
            grad_fn = _accumulate(grad_fn, grad_accum_steps, mesh)
        grads, rest, metrics = grad_fn(params, rest, batch)
        if ogm is not None:
            step = optimizer.step[...]
            prefix = "balance_coeff_"
            coefficients = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
            modulated = modulate(grads, coefficients, ogm.noise_key(step))
            grads = jax.tree.map(lambda m, g: jnp.where(step < ogm.until, m, g), modulated, grads)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        update = _update(graphdef, tx)
        new_state = jax.lax.cond(
            finite, update, lambda state, *_: state, state, grads, rest, grad_norm
        )
        metrics = {
            **metrics,
            "grad_norm": grad_norm,
            "nonfinite": (~finite).astype(jnp.float32),
        }
        return new_state, metrics

    return train_step


def _jit_train_step(
    step: Callable[[S, Batch], tuple[S, Metrics]], shardings: S, mesh: jax.sharding.Mesh
) -> Callable[[S, Batch], tuple[S, Metrics]]:
    """`step` jitted with the state (sharded as `shardings`) donated and the batch sharded."""
    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharded(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
        compiler_options=model_compiler_options(),
    )


def _run_step(
    graphdef: nnx.GraphDef,
    mesh: jax.sharding.Mesh,
    grad_accum_steps: int,
    compute_dtype: str,
    ogm: OGMGE | None,
) -> Callable[[nnx.State, Batch], tuple[nnx.State, Metrics]]:
    """`train_step_function` for one run, unjitted: the optimizer's own transformation, `ogm`."""
    step = train_step_function(
        graphdef, mesh, grad_accum_steps=grad_accum_steps, compute_dtype=compute_dtype
    )

    def train_step(state: nnx.State, batch: Batch) -> tuple[nnx.State, Metrics]:
        return step(state, batch, None, ogm)

    return train_step


def make_train_step(
    graphdef: nnx.GraphDef,
    shardings: nnx.State,
    mesh: jax.sharding.Mesh,
    *,
    grad_accum_steps: int = 1,
    compute_dtype: str = "float32",
    ogm: OGMGE | None = None,
) -> Callable[[nnx.State, Batch], tuple[nnx.State, Metrics]]:
    """(state, batch [B, ...]) -> (new state, metrics): `train_step_function` with the
    optimizer's own transformation, jitted; the state is donated, the batch sharded."""
    step = _run_step(graphdef, mesh, grad_accum_steps, compute_dtype, ogm)
    return _jit_train_step(step, shardings, mesh)


class LeafTrainStep:
    """`make_train_step`'s program over the train state's leaves (a list of arrays) instead of
    its nnx.State: (leaves, batch [B, ...]) -> (new leaves, metrics). The training loop holds
    the leaves between steps and rebuilds the State (`state`) only where it needs one.

    Why: jit's C++ dispatch takes a list of arrays without calling Python, while an nnx.State
    is flattened by a Python callback per State node and Variable, and the returned one rebuilt
    Variable by Variable. The peer suite's image CNN (51 leaves, batch 64) steps in 2.42 ms
    this way against 2.74 ms on its State (medians of 10 interleaved rounds, same losses).
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        shardings: nnx.State,
        mesh: jax.sharding.Mesh,
        *,
        grad_accum_steps: int = 1,
        compute_dtype: str = "float32",
        ogm: OGMGE | None = None,
    ):
        step = _run_step(graphdef, mesh, grad_accum_steps, compute_dtype, ogm)
        self.treedef = jax.tree.structure(shardings)

        def leaf_step(leaves: list[jax.Array], batch: Batch) -> tuple[list[jax.Array], Metrics]:
            state, metrics = step(self.state(leaves), batch)
            return self.leaves(state), metrics

        self.jitted = _jit_train_step(leaf_step, jax.tree.leaves(shardings), mesh)

    def leaves(self, state: nnx.State) -> list[jax.Array]:
        """The leaves of a train state of this step's structure, in its order."""
        return self.treedef.flatten_up_to(state)

    def state(self, leaves: list[jax.Array]) -> nnx.State:
        return jax.tree.unflatten(self.treedef, leaves)

    def __call__(self, leaves: list[jax.Array], batch: Batch) -> tuple[list[jax.Array], Metrics]:
        return self.jitted(leaves, batch)


EvalStep = Callable[[nnx.State, Batch, jax.Array], dict[str, jax.Array]]


def make_eval_step(
    graphdef: nnx.GraphDef, shardings: nnx.State, mesh: jax.sharding.Mesh
) -> EvalStep:
    """(state, batch, valid [B] bool) -> summed loss, correct count, number of the valid rows
    and confusion matrix [C, C] (rows: true class, columns: predicted; int32 counts), over the
    global batch, so every process gets the totals of all."""

    def eval_step(state: nnx.State, batch: Batch, valid: jax.Array) -> dict[str, jax.Array]:
        merged = nnx.merge(graphdef, state)  # a train state (model, optimizer) or a model
        model = merged[0] if isinstance(merged, tuple) else merged
        logits = model(_inputs(batch), train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        predicted = jnp.argmax(logits, -1)
        classes = logits.shape[-1]
        truth = jax.nn.one_hot(batch["label"], classes, dtype=jnp.int32) * valid[:, None]
        return {
            "loss_sum": jnp.sum(loss * valid),
            "correct": jnp.sum((predicted == batch["label"]) * valid),
            "examples": jnp.sum(valid),
            "confusion": truth.T @ jax.nn.one_hot(predicted, classes, dtype=jnp.int32),
        }

    return jax.jit(
        eval_step,
        in_shardings=(shardings, batch_sharded(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
        compiler_options=model_compiler_options(),
    )
