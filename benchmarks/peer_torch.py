"""PyTorch peers of the mmjax models in `benchmarks/peer_models.py`, for timing mmjax against
the same network in PyTorch.

Each peer mirrors one mmjax model section layer for layer: the same layer types, parameter
shapes, activations (tanh-approximate GELU, as `nnx.gelu`), dropout rates, BatchNorm (train mode
in training; flax momentum 0.9 = torch momentum 0.1, eps 1e-5), modality-mask handling, loss
(softmax cross-entropy, integer labels) and optimizer (global-norm clip 1.0 + AdamW on the
warm-up + cosine schedule of `mmjax.train.optim`, defaults of `mmjax.config.OptimConfig`).

Batches come in mmjax's layout (images NHWC); the peers transpose inside the model, so that
cost is counted. Submodules carry mmjax's names (`encoders.image.blocks.0.conv`, ...) so that
`load_mmjax_weights` can copy an mmjax model's parameters and batch statistics in for parity
checks (tests/test_peer_torch.py: same logits, loss, clipped gradients and update).

Where the peers differ from mmjax, on purpose: BatchNorm's running variance is torch's (the
unbiased batch variance, flax keeps the biased one; the running mean and everything in the
step's output are the same); the log-mel uses `torch.stft` (an FFT, as mmjax's `jnp.fft.rfft`);
the LSTMs call PyTorch's fused LSTM kernel and stay out of `torch.compile`'s graphs (see `LSTM`).

Typical use::

    model = torch_model("image_cnn")
    batch = torch_batch(peer_models.numpy_batch("image_cnn", 64))
    step = compiled(torch_train_step(model))  # or the eager step
    loss = step(batch)
"""

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.peer_models import PEERS
from mmjax.config import OptimConfig
from mmjax.models.logmel import LogMelConfig, mel_filterbank


def torch_batch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy batch -> torch tensors (same layouts); integer arrays become int64 (what
    `nn.Embedding` and `F.cross_entropy` index with)."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.long() if v.dtype.kind in "iu" else t
    return out


# Layers ----------------------------------------------------------------------------------------


class ConvBNReLU(nn.Module):
    """mmjax `ConvBNReLU`: 3x3 'SAME' conv (no bias) -> BatchNorm -> ReLU, NCHW [B, C, H, W]."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class FusedRNN(nn.Module):
    """One-layer recurrent layer with a flax cell's parameters: input weights, recurrent
    weights and one bias (`flax_bias` names the flax layer that holds it), `gates` blocks of
    `hidden` rows each in flax's gate order, which is torch's too. Subclasses run PyTorch's
    fused kernel (`_fused`), whose second bias is a zero buffer here.
    x [B, T, in] -> outputs [B, T, hidden], zero initial state.
    """

    gates: int
    flax_bias: str

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        rows = self.gates * hidden
        bound = 1.0 / math.sqrt(hidden)
        self.weight_ih = nn.Parameter(torch.empty(rows, in_features).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(rows))
        self.register_buffer("zero_bias", torch.zeros(rows), persistent=False)

    # Under torch.compile the fused kernel runs as is (a graph break), as Dynamo treats nn.LSTM
    # by default. Traced, Inductor unrolls the recurrence: for text_bilstm (B=32, 2 CPU cores)
    # that took 125 s to compile and ran the train step in 37 ms against 28 ms eager; kept out,
    # 8 s and 14 ms.
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = x.new_zeros(1, x.shape[0], self.hidden)
        weights = [self.weight_ih, self.weight_hh, self.bias, self.zero_bias]
        return self._fused(x, h0, weights)

    def _fused(self, x: torch.Tensor, h0: torch.Tensor, weights: list) -> torch.Tensor:
        raise NotImplementedError


class LSTM(FusedRNN):
    """flax `OptimizedLSTMCell`: input weights without a bias, recurrent weights with one,
    gates i, f, g, o. Runs `torch.lstm` (what `nn.LSTM` calls)."""

    gates, flax_bias = 4, "cell.dense_h.bias"

    def _fused(self, x: torch.Tensor, h0: torch.Tensor, weights: list) -> torch.Tensor:
        return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]


class GRU(FusedRNN):
    """flax `GRUCell`: input weights with a bias, recurrent weights without one, gates r, z, n,
    n = tanh(W_in x + b_in + r * W_hn h) and h' = (1 - z) n + z h, which is `torch.gru` with
    its recurrent bias at zero."""

    gates, flax_bias = 3, "cell.dense_i.bias"

    def _fused(self, x: torch.Tensor, h0: torch.Tensor, weights: list) -> torch.Tensor:
        return torch.gru(x, h0, weights, True, 1, 0.0, self.training, False, True)[0]


class MLP(nn.Module):
    """mmjax `MLP`: Linear -> GELU(tanh) -> dropout, repeated; the last layer linear only."""

    def __init__(self, dims: tuple[int, ...], dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(F.gelu(x, approximate="tanh"))
        return x


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mmjax `masked_mean`: mean of tokens [B, T, D] over the True steps of mask [B, T]."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


# Encoders: input -> (tokens [B, T, D], pooled [B, D]) --------------------------------------------


class SmallCNN(nn.Module):
    """mmjax `small_cnn`: images NHWC [B, H, W, C] -> conv blocks (2x2 max-pool while the map is
    >= 4 on both sides) -> per-position Linear; pooled = token mean. Transposes to NCHW inside."""

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (32, 64), dim: int = 64):
        super().__init__()
        widths = (in_channels, *channels)
        self.blocks = nn.ModuleList(ConvBNReLU(a, b) for a, b in itertools.pairwise(widths))
        self.proj = nn.Linear(widths[-1], dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW (a channels-last view: no copy here)
        for block in self.blocks:
            x = block(x)
            if min(x.shape[2:]) >= 4:
                x = F.max_pool2d(x, 2, 2)
        tokens = self.proj(x.permute(0, 2, 3, 1).flatten(1, 2))  # [B, H*W, dim]
        return tokens, tokens.mean(1)


class LogMel(nn.Module):
    """mmjax's log-mel front end + per-utterance standardisation: wave [B, S] -> [B, T, n_mels].

    Uses `torch.stft` (an FFT, like `jnp.fft.rfft` in mmjax; a matmul DFT would do ~25x the
    FLOPs at n_fft 256) with the same framing: centred, zero padding, periodic Hann window,
    T = 1 + S // hop. Power is real^2 + imag^2, the mel filterbank is mmjax's own (Slaney), and
    log(mel + 1e-6) is standardised by its mean and population std over (T, n_mels).
    """

    def __init__(self, cfg: LogMelConfig):
        super().__init__()
        self.cfg = cfg
        window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filterbank(cfg)), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            wave,
            self.cfg.n_fft,
            self.cfg.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # [B, n_fft // 2 + 1, T]
        spec = torch.view_as_real(spec)
        power = spec.square().sum(-1).transpose(1, 2)  # [B, T, n_fft // 2 + 1]
        feats = torch.log(power @ self.filters + self.cfg.log_eps)
        mean = feats.mean(dim=(1, 2), keepdim=True)
        std = feats.std(dim=(1, 2), keepdim=True, correction=0)
        return (feats - mean) / (std + 1e-5)


class CNNLSTM(nn.Module):
    """mmjax `cnn_lstm`: wave [B, S] -> log-mel [B, 1, T, F] -> conv blocks, each followed by a
    2x2 max-pool -> (F x C) per step -> LSTM; tokens [B, T / 4, hidden], pooled = their mean."""

    def __init__(self, channels: tuple[int, ...] = (16, 32), hidden: int = 64):
        super().__init__()
        self.mel = LogMel(LogMelConfig())
        widths = (1, *channels)
        self.blocks = nn.ModuleList(ConvBNReLU(a, b) for a, b in itertools.pairwise(widths))
        freq = self.mel.cfg.n_mels // 2 ** len(channels)
        self.lstm = LSTM(widths[-1] * freq, hidden)
        self.dim = hidden

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.mel(wave).unsqueeze(1)  # [B, 1, T, F]: NCHW with time as height
        for block in self.blocks:
            x = F.max_pool2d(block(x), 2, 2)
        # mmjax flattens "b t f c -> b t (f c)": channels fastest
        tokens = self.lstm(x.permute(0, 2, 3, 1).flatten(2))
        return tokens, tokens.mean(1)


class BiRNNText(nn.Module):
    """mmjax `bilstm` / `bigru`: ids [B, L] (0 = padding) -> embedding -> a forward RNN and a
    backward RNN over each sequence reversed within its length (flax `flip_sequences`) ->
    [fwd, bwd] concat; pooled = mean over the non-padding steps. tokens [B, L, 2 * hidden]."""

    def __init__(self, cell: type[nn.Module], vocab_size: int, embed_dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.Module()
        self.rnn.forward_rnn = cell(embed_dim, hidden)
        self.rnn.backward_rnn = cell(embed_dim, hidden)
        self.dim = 2 * hidden

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != 0
        steps = ids.shape[1]
        lengths = mask.sum(1, keepdim=True)
        # flip each sequence within its length, padding kept at the end (as flax does)
        flip = (torch.arange(steps - 1, -1, -1, device=ids.device) + lengths) % steps  # [B, L]
        flip = flip.unsqueeze(-1)
        x = self.embed(ids)
        forward = self.rnn.forward_rnn(x)
        index = flip.expand(-1, -1, x.shape[-1])
        backward = self.rnn.backward_rnn(torch.gather(x, 1, index))
        backward = torch.gather(backward, 1, flip.expand(-1, -1, backward.shape[-1]))
        tokens = torch.cat([forward, backward], -1)
        return tokens, masked_mean(tokens, mask)


_TEXT_CELLS: dict[str, type[nn.Module]] = {"bilstm": LSTM, "bigru": GRU}


def _encoder(spec: dict[str, Any]) -> nn.Module:
    """The peer of one mmjax encoder spec ({"name": ..., fields})."""
    fields = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "small_cnn":
        return SmallCNN(**fields)
    if spec["name"] == "cnn_lstm":
        return CNNLSTM(**fields)
    if spec["name"] in _TEXT_CELLS:
        return BiRNNText(_TEXT_CELLS[spec["name"]], **fields)
    raise ValueError(f"no PyTorch peer for encoder {spec['name']!r}")


# Fusion, head, model ---------------------------------------------------------------------------


class LateConcat(nn.Module):
    """mmjax `late_concat`: per modality (sorted) pooled * present and the present flag,
    concatenated -> MLP (width, hidden, hidden) -> GELU(tanh). Output [B, hidden]."""

    def __init__(self, dims: dict[str, int], hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.modalities = tuple(sorted(dims))
        self.mlp = MLP((sum(dims.values()) + len(dims), hidden, hidden), dropout)

    def forward(self, pooled: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]):
        parts = []
        for m in self.modalities:
            present = masks[m].to(torch.float32).unsqueeze(1)
            parts += [pooled[m] * present, present]
        return F.gelu(self.mlp(torch.cat(parts, -1)), approximate="tanh")


class Classifier(nn.Module):
    """mmjax `Classifier`: Linear [B, D] -> logits [B, num_classes]."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MultimodalModel(nn.Module):
    """mmjax `MultimodalModel` for these peers: batch {m: x, m_mask: [B] bool} -> logits
    [B, num_classes]. A modality absent from the batch gets zero features and a False mask."""

    def __init__(self, section: dict[str, Any]):
        super().__init__()
        if section["fusion"]["name"] != "late_concat":
            raise ValueError(f"no PyTorch peer for fusion {section['fusion']['name']!r}")
        self.encoders = nn.ModuleDict({m: _encoder(s) for m, s in section["encoders"].items()})
        fusion = {k: v for k, v in section["fusion"].items() if k != "name"}
        dims = {m: enc.dim for m, enc in self.encoders.items()}
        self.fusion = LateConcat(dims, **fusion)
        self.head = Classifier(self.fusion.mlp.layers[-1].out_features, section["num_classes"])
        self.classification_weight = float(section["classification_weight"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        present = [m for m in self.encoders if m in batch]
        size = batch[present[0]].shape[0]
        pooled, masks = {}, {}
        for m, encoder in self.encoders.items():
            if m in batch:
                pooled[m] = encoder(batch[m])[1]
                mask = batch.get(f"{m}_mask")
                masks[m] = torch.ones(size, dtype=torch.bool) if mask is None else mask
            else:
                pooled[m] = torch.zeros(size, encoder.dim)
                masks[m] = torch.zeros(size, dtype=torch.bool)
        return self.head(self.fusion(pooled, masks))


def torch_model(name: str) -> nn.Module:
    """The PyTorch peer of `PEERS[name]()` (in train mode, float32, on the CPU)."""
    return MultimodalModel(PEERS[name]())


# Steps -----------------------------------------------------------------------------------------


class PeerStep:
    """A step function: `before()`, `body(batch)`, `after()`. The body holds the tensor work
    (what `compiled` compiles); before/after the Python-side bookkeeping (train/eval mode, the
    learning-rate schedule), kept out of the compiled region so it never triggers a recompile.
    """

    def __init__(
        self,
        body: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        before: Callable[[], None] = lambda: None,
        after: Callable[[], None] = lambda: None,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        self.body, self.before, self.after, self.optimizer = body, before, after, optimizer

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.before()
        out = self.body(batch)
        self.after()
        return out


def torch_forward(model: nn.Module) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Eval-mode inference: batch -> logits [B, 10], without autograd (a "label" key is
    ignored). Switches `model` to eval mode at each call when it is not (a train step switches
    it back)."""

    def eval_mode() -> None:
        if model.training:
            model.eval()

    @torch.no_grad()
    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model({k: v for k, v in batch.items() if k != "label"})

    return PeerStep(forward, before=eval_mode)


def _schedule(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """`mmjax.train.optim`'s learning-rate factor (of peak lr) at a step: linear warm-up from 0,
    then cosine decay to 1% (optax `warmup_cosine_decay_schedule`)."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay = max(total_steps, warmup + 1) - warmup
    alpha = 0.01

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        t = min(step - warmup, decay) / decay
        return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha

    return factor


def torch_train_step(
    model: nn.Module, *, total_steps: int = 1000
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """One train-mode step per call: zero grads, cross-entropy loss of batch["label"] (times
    the section's classification_weight), backward, global-norm clip 1.0, AdamW step (lr/betas/
    weight decay of the default OptimConfig) and the warm-up + cosine schedule over
    `total_steps`. Returns the loss (detached scalar tensor).

    The learning rate is a tensor, so a compiled step does not recompile as it changes.
    """
    cfg = OptimConfig()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=torch.tensor(cfg.learning_rate),
        betas=(cfg.b1, cfg.b2),
        eps=1e-8,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, total_steps))
    weight = getattr(model, "classification_weight", 1.0)

    def train_mode() -> None:
        if not model.training:
            model.train()

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        logits = model({k: v for k, v in batch.items() if k != "label"})
        loss = weight * F.cross_entropy(logits, batch["label"])
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        return loss.detach()

    return PeerStep(step, before=train_mode, after=scheduler.step, optimizer=optimizer)


def compiled(fn: Callable, **kwargs: Any) -> Callable:
    """`torch.compile` (default: Inductor, mode "default"; keyword arguments go to
    `torch.compile`) of a `torch_forward` / `torch_train_step` function's tensor work, its
    mode switch and lr schedule left outside; any other function is compiled whole.

    In the train step Dynamo breaks the graph at `loss.backward()`: the forward (with its
    AOT-compiled backward), then gradient clipping + AdamW compile as separate graphs; the
    LSTMs' fused kernels run as they are (see `LSTM`). The first call compiles (seconds).
    """
    if isinstance(fn, PeerStep):
        body = torch.compile(fn.body, **kwargs)
        return PeerStep(body, fn.before, fn.after, fn.optimizer)
    return torch.compile(fn, **kwargs)


# Parity helpers --------------------------------------------------------------------------------


def _flax_params(module: nn.Module) -> dict[str, tuple[torch.Tensor, Callable]]:
    """{flax name of a parameter under `module`: (torch parameter, torch -> flax layout)}."""
    same = lambda t: t
    if isinstance(module, nn.Conv2d):
        return {"kernel": (module.weight, lambda t: t.permute(2, 3, 1, 0))}  # OIHW -> HWIO
    if isinstance(module, nn.Linear):
        return {"kernel": (module.weight, lambda t: t.T), "bias": (module.bias, same)}
    if isinstance(module, nn.BatchNorm2d):
        return {"scale": (module.weight, same), "bias": (module.bias, same)}
    if isinstance(module, nn.Embedding):
        return {"embedding": (module.weight, same)}
    if isinstance(module, FusedRNN):
        return {
            "cell.dense_i.kernel": (module.weight_ih, lambda t: t.T),  # [G*H, in] -> [in, G*H]
            "cell.dense_h.kernel": (module.weight_hh, lambda t: t.T),
            module.flax_bias: (module.bias, same),
        }
    return {}


def parameter_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Sorted shapes of every parameter of `model`, in mmjax's layout (conv HWIO, Linear and
    LSTM kernels [in, out]); fails if some parameter has no known mmjax counterpart."""
    shapes, seen = [], set()
    for module in model.modules():
        for tensor, to_flax in _flax_params(module).values():
            shapes.append(tuple(to_flax(tensor).shape))
            seen.add(id(tensor))
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise ValueError(f"parameters without an mmjax layout: {missing}")
    return sorted(shapes)


def load_mmjax_weights(model: nn.Module, source: Any) -> None:
    """Copy mmjax values into the peer `model` in place: `source` is the mmjax model (its
    parameters and BatchNorm statistics are copied) or an `nnx.State` of its parameters
    (e.g. gradients). Names match: torch `encoders.image.blocks.0.conv.weight` <- mmjax
    `encoders/image/blocks/0/conv/kernel`, transposed to torch's layout."""
    from flax import nnx

    if not isinstance(source, nnx.State):
        source = nnx.state(source, nnx.Any(nnx.Param, nnx.BatchStat))
    flat = {}
    for path, v in nnx.to_flat_state(source):
        flat[".".join(map(str, path))] = np.asarray(v.get_value() if hasattr(v, "get_value") else v)
    used = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return torch.from_numpy(np.array(flat[key]))

    with torch.no_grad():
        for prefix, module in model.named_modules():
            for name, (tensor, to_flax) in _flax_params(module).items():
                key = f"{prefix}.{name}"
                value = take(key)
                if tuple(to_flax(tensor).shape) != tuple(value.shape):
                    raise ValueError(f"{key}: {tuple(value.shape)} vs {tuple(tensor.shape)}")
                to_flax(tensor).copy_(value)  # views: writes through to the torch layout
            if isinstance(module, nn.BatchNorm2d) and f"{prefix}.mean" in flat:
                module.running_mean.copy_(take(f"{prefix}.mean"))
                module.running_var.copy_(take(f"{prefix}.var"))
    left = set(flat) - used
    if left:
        raise ValueError(f"mmjax values with no peer: {sorted(left)}")
