"""Video encoders: frames [B, T, H, W, C] float in [0, 1] -> Features (tokens = frames)."""

import dataclasses

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from mmjax.errors import ConfigError, InputError
from mmjax.models.layers import (
    Features,
    TransformerBlock,
    features_from_tokens,
    sinusoidal_positions,
)
from mmjax.models.recurrent import run_rnn
from mmjax.registry import ENCODERS

TEMPORAL_MODELS = ("mean", "lstm", "transformer")


def _frame_encoder(name: str, in_channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """The registered image encoder `name` with its default Config (in_channels overridden)."""
    try:
        cls = ENCODERS.get(name)
    except ConfigError as err:
        raise ConfigError(f"video.frame_encoder: {err}") from None
    if cls.modality != "image":
        raise ConfigError(
            f"video.frame_encoder must name an image encoder, got {name!r} ({cls.modality})"
        )
    cfg = cls.Config()
    if any(f.name == "in_channels" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, in_channels=in_channels)
    return cls(cfg, rngs=rngs)


@ENCODERS.register("video")
class FrameVideo(nnx.Module):
    """Per-frame image encoder + temporal model (mean / LSTM / Transformer over frames).

    Time is folded into the batch and each frame goes through the registered image encoder
    `frame_encoder`; its pooled vectors [B, T, D] then pass the `temporal` model, whose outputs
    are the tokens (one per frame) and whose masked mean is the pooled vector. This is the
    "single-frame CNN + temporal pooling / LSTM" family (Karpathy et al. 2014; Donahue et al.
    2015). A Config field cannot hold another encoder's Config, so the frame encoder is built
    with its own *default* Config, only its `in_channels` (if it has that field) being set from
    this Config's `in_channels`. Catalog image weights (`model.pretrained.video:
    efficientnet-lite0` with `frame_encoder: efficientnet_lite0`) go into the frame encoder;
    frozen, with `temporal: "mean"`, its frame features can be cached once with
    `mmjax features extract`.
    """

    modality = "video"

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_channels: int = 3
        frame_encoder: str = "small_cnn"  # a registered image encoder
        temporal: str = "mean"  # "mean" | "lstm" | "transformer"
        hidden: int = 128  # width of the lstm / transformer temporal model
        depth: int = 2  # transformer blocks
        heads: int = 4
        dropout: float = 0.0

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        if cfg.temporal not in TEMPORAL_MODELS:
            raise ConfigError(
                f"video.temporal must be one of {', '.join(map(repr, TEMPORAL_MODELS))}, "
                f"got {cfg.temporal!r}"
            )
        self.in_channels = cfg.in_channels
        self.frames = _frame_encoder(cfg.frame_encoder, cfg.in_channels, rngs)
        width = self.frames.dim
        lstm = cfg.temporal == "lstm"
        transformer = cfg.temporal == "transformer"
        self.lstm = nnx.data(
            nnx.RNN(nnx.OptimizedLSTMCell(width, cfg.hidden, rngs=rngs)) if lstm else None
        )
        self.proj = nnx.data(nnx.Linear(width, cfg.hidden, rngs=rngs) if transformer else None)
        self.blocks = nnx.List(
            [
                TransformerBlock(cfg.hidden, cfg.heads, dropout=cfg.dropout, rngs=rngs)
                for _ in range(cfg.depth if transformer else 0)
            ]
        )
        self.norm = nnx.data(nnx.LayerNorm(cfg.hidden, rngs=rngs) if transformer else None)
        self.dim = width if cfg.temporal == "mean" else cfg.hidden

    def __call__(self, x: jax.Array, *, train: bool) -> Features:
        if x.ndim != 5 or x.shape[-1] != self.in_channels:
            raise InputError(
                f"video: expected frames [B, T, H, W, {self.in_channels}], got {tuple(x.shape)}"
            )
        b = x.shape[0]
        frames = self.frames(rearrange(x, "b t h w c -> (b t) h w c"), train=train).pooled
        tokens = rearrange(frames, "(b t) d -> b t d", b=b)
        mask = jnp.ones(tokens.shape[:2], bool)
        if self.lstm is not None:
            tokens = run_rnn(self.lstm, tokens)
        if self.proj is not None:
            tokens = self.proj(tokens) + sinusoidal_positions(tokens.shape[1], self.dim)
            for block in self.blocks:
                tokens = block(tokens, mask, train=train)
            tokens = self.norm(tokens)
        return features_from_tokens(tokens, mask)
