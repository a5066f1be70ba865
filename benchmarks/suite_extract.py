"""extract: every registered encoder's forward pass (inference mode), across batch sizes.

This is feature extraction as `mmjax features extract` runs it: parameters and inputs on the
device, one jitted program per (encoder, batch size).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import inputs
from benchmarks.harness import Context, Planned, timed
from mmjax.compile_options import model_compiler_options
from mmjax.models.layers import jit_init
from mmjax.registry import ENCODERS

# A smoke run times one encoder per kind (CNN, CNN-LSTM, RNN, Transformer); tests/
# test_components.py already runs every encoder.
SMOKE_ENCODERS = ("small_cnn", "cnn_lstm", "bilstm", "text_transformer")


def forward_program(encoder: nnx.Module):
    """(jitted forward(state, x) -> pooled features, the encoder's state)."""
    graphdef, state = nnx.split(encoder)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x, train=False).pooled

    return jax.jit(forward, compiler_options=model_compiler_options()), state


def _encoders(ctx: Context) -> tuple[str, ...]:
    return SMOKE_ENCODERS if ctx.smoke else tuple(ENCODERS.names())


def plan(ctx: Context) -> list[Planned]:
    """Each encoder at each batch size."""
    size = inputs.sizes(ctx)
    return [
        Planned("extract", name, "forward", batch, note=ENCODERS.get(name).modality)
        for name in _encoders(ctx)
        for batch in size.batches
    ]


def run(ctx: Context) -> None:
    size = inputs.sizes(ctx)
    for name in _encoders(ctx):
        cls = ENCODERS.get(name)
        cfg = inputs.encoder_config(cls, ctx, size)
        encoder = jit_init(lambda cls=cls, cfg=cfg: cls(cfg, rngs=nnx.Rngs(0)))
        params = sum(x.size for x in jax.tree.leaves(nnx.state(encoder, nnx.Param)))
        forward, state = forward_program(encoder)
        for batch in size.batches:
            x = jnp.asarray(inputs.encoder_input(cls, cfg, size, batch))
            ctx.record(
                "extract",
                model=name,
                modality=cls.modality,
                variant="forward",
                batch=batch,
                shapes={"input": list(x.shape)},
                dtype="float32",
                mesh="1",
                params=params,
                **timed(ctx, forward, (state, x), batch=batch),
            )
