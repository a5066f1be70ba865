"""fused: the AV-Digits encoders (small CNN on the 8x8 digit, CNN-LSTM on 1 s of 8 kHz audio)
with each fusion head, forward and forward+backward, against the encoders alone.

`fusion_overhead` = t(whole model) / (sum of t(each encoder alone)) - 1, all timed in this
run at the same batch size: what the head (and the glue around it) costs on top of the
encoders (reference/performance-anchors.md R3a: concat <= 5 %, attention <= 25 %).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import inputs
from benchmarks.harness import Context, Planned, timed
from mmjax.compile_options import model_compiler_options
from mmjax.config import model_config_from
from mmjax.models import build_model
from mmjax.models.layers import jit_init
from mmjax.models.zoo import avdigits_late
from mmjax.registry import ENCODERS, FUSIONS
from mmjax.train.step import training_loss


def avdigits_batch(batch: int, samples: int = 8000, seed: int = 0) -> dict[str, np.ndarray]:
    """Random AV-Digits-shaped inputs: image [B, 8, 8, 1], audio [B, samples], masks, labels."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((batch, 8, 8, 1), np.float32),
        "audio": rng.standard_normal((batch, samples), np.float32),
        "image_mask": np.ones(batch, bool),
        "audio_mask": np.ones(batch, bool),
        "label": inputs.label_batch(batch, 10, seed),
    }


def _jitted(*functions: Callable) -> tuple[Callable, ...]:
    """Each function jitted as mmjax jits its model programs."""
    return tuple(jax.jit(f, compiler_options=model_compiler_options()) for f in functions)


def model_programs(model: nnx.Module) -> tuple[Callable, Callable, nnx.State]:
    """(jitted forward(state, batch) -> logits, jitted grads(state, batch), state)."""
    graphdef, state = nnx.split(model)

    def forward(state, batch):
        inputs_only = {k: v for k, v in batch.items() if k != "label"}
        return nnx.merge(graphdef, state)(inputs_only, train=False)

    def grads(state, batch):
        model = nnx.merge(graphdef, state)
        differentiate = nnx.DiffState(0, model.trainable())
        return nnx.grad(lambda m: training_loss(m, batch)[0], argnums=differentiate)(model)

    return (*_jitted(forward, grads), state)


def encoder_programs(encoder: nnx.Module) -> tuple[Callable, Callable, nnx.State]:
    """The same pair for one encoder alone; its backward starts from a fixed projection."""
    graphdef, state = nnx.split(encoder)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x, train=False).pooled

    def grads(state, x):
        def loss(m):
            pooled = m(x, train=True).pooled
            return jnp.sum(pooled * jnp.linspace(-1.0, 1.0, pooled.shape[-1]))

        return nnx.grad(loss)(nnx.merge(graphdef, state))

    return (*_jitted(forward, grads), state)


def _section(head: str, smoke: bool) -> dict:
    section = avdigits_late()
    section["fusion"] = {"name": head}
    return inputs.smoke_section(section) if smoke else section


VARIANTS = ("forward", "forward+backward")


def _batches(ctx: Context) -> tuple[int, ...]:
    return (2,) if ctx.smoke else (64, 256)


def _heads(ctx: Context) -> tuple[str, ...]:
    return ("late_concat",) if ctx.smoke else tuple(FUSIONS.names())


def plan(ctx: Context) -> list[Planned]:
    """Per batch size: each encoder alone, then each head's whole model; both variants."""
    base = model_config_from(_section("late_concat", ctx.smoke))
    planned = []
    for batch in _batches(ctx):
        for modality, component in base.encoders:
            planned += [
                Planned("fused", f"encoder:{component.name}", v, batch, note=modality)
                for v in VARIANTS
            ]
        for head in _heads(ctx):
            planned += [Planned("fused", f"avdigits:{head}", v, batch) for v in VARIANTS]
    return planned


def run(ctx: Context) -> None:
    """Full: every head at batch 64 and 256. Smoke: late_concat on tiny encoders."""
    base = model_config_from(_section("late_concat", ctx.smoke))
    encoders_ms = {}
    for batch in _batches(ctx):
        samples = 2000 if ctx.smoke else 8000
        data = {k: jnp.asarray(v) for k, v in avdigits_batch(batch, samples).items()}
        for modality, component in base.encoders:
            cls = ENCODERS.get(component.name)
            encoder = jit_init(lambda cls=cls, c=component: cls(c.cfg, rngs=nnx.Rngs(0)))
            forward, grads, state = encoder_programs(encoder)
            x = data[modality]
            for variant, program in zip(VARIANTS, (forward, grads), strict=True):
                line = ctx.record(
                    "fused",
                    model=f"encoder:{component.name}",
                    modality=modality,
                    variant=variant,
                    batch=batch,
                    shapes={modality: list(x.shape)},
                    dtype="float32",
                    mesh="1",
                    **timed(ctx, program, (state, x), batch=batch),
                )
                key = (batch, variant)
                encoders_ms[key] = encoders_ms.get(key, 0.0) + line["step_ms_p50"]
        for head in _heads(ctx):
            cfg = model_config_from(_section(head, ctx.smoke))
            model = jit_init(lambda cfg=cfg: build_model(cfg, rngs=nnx.Rngs(0)))
            forward, grads, state = model_programs(model)
            fusion_params = sum(x.size for x in jax.tree.leaves(nnx.state(model.fusion, nnx.Param)))
            for variant, program in zip(VARIANTS, (forward, grads), strict=True):
                fields = timed(ctx, program, (state, data), batch=batch)
                ctx.record(
                    "fused",
                    model=f"avdigits:{head}",
                    modality="image+audio",
                    variant=variant,
                    batch=batch,
                    shapes={k: list(v.shape) for k, v in data.items()},
                    dtype="float32",
                    mesh="1",
                    fusion_params=fusion_params,
                    encoders_ms=encoders_ms[(batch, variant)],
                    fusion_overhead=fields["step_ms_p50"] / encoders_ms[(batch, variant)] - 1,
                    **fields,
                )
