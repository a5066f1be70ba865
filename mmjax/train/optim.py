"""The Optax optimizer built from an OptimConfig."""

from collections.abc import Callable, Mapping

import jax
import optax

from mmjax.config import OptimConfig


def make_optimizer(
    cfg: OptimConfig, total_steps: int, traced: Mapping[str, jax.Array] | None = None
) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a warm-up + cosine-decay learning-rate schedule.

    `traced` replaces some of `cfg`'s float settings (learning_rate, weight_decay, b1, b2,
    grad_clip) by traced values, as a sweep's copies have them; the transformation and its
    state keep their structure (clipping is chained when `cfg.grad_clip` > 0)."""
    value = {**vars(cfg), **(traced or {})}
    schedule = learning_rate_schedule(cfg, total_steps, value["learning_rate"])
    adam = optax.adamw(schedule, b1=value["b1"], b2=value["b2"], weight_decay=value["weight_decay"])
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(value["grad_clip"]), adam)
    return adam


def learning_rate_schedule(
    cfg: OptimConfig, total_steps: int, peak: float | jax.Array | None = None
) -> Callable[[jax.Array], jax.Array]:
    """The learning rate after `count` updates: linear warm-up to `peak` (default
    `cfg.learning_rate`), then cosine decay to 1 % of it at `total_steps`."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    # The peak scales a unit schedule, so a traced learning rate is the same arithmetic.
    shape = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=1.0,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.01,
    )
    peak = cfg.learning_rate if peak is None else peak

    def schedule(count: jax.Array) -> jax.Array:
        return peak * shape(count)

    return schedule
