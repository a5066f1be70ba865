"""Configs: `configs/*.py` files give ConfigDicts; `--set` overrides them; typed views feed code.

Configuration flows one way: config file -> ConfigDict (+ overrides) -> frozen dataclasses ->
constructors. Every mistake (unknown key, wrong type, unknown component) is a ConfigError that
names the key and what is valid there.
"""

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from mmjax.errors import ConfigError
from mmjax.registry import ENCODERS, FUSIONS, Registry

ConfigDict = ml_collections.ConfigDict


def load_config_file(spec: str) -> ConfigDict:
    """Load `path/to/config.py[:arg]`: the file's `get_config(arg)` result, locked."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    try:
        exists = file.is_file()
    except OSError as err:  # a name too long, a permission denied on the way
        raise ConfigError(f"config file {path!r} is unreadable ({err.strerror or err})") from None
    if not exists:
        raise ConfigError(f"config file {path!r} does not exist (expected configs/NAME.py)")
    module_spec = importlib.util.spec_from_file_location(f"mmjax_config_{file.stem}", file)
    if module_spec is None:
        raise ConfigError(f"config file {path!r} is not a Python file (expected configs/NAME.py)")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the file is user input: a syntax error, a failed import, ...
        raise ConfigError(f"config file {path!r} failed to run: {_describe(err)}") from err
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg) function")
    try:
        cfg = module.get_config(arg or None)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(
            f"config file {path!r}: get_config({arg or None!r}) failed: {_describe(err)}"
        ) from err
    if not isinstance(cfg, ConfigDict):
        raise ConfigError(
            f"{path}: get_config() must return an ml_collections.ConfigDict, "
            f"got {type(cfg).__name__}"
        )
    cfg.lock()
    return cfg


def _describe(err: BaseException) -> str:
    """`Type: message` of an exception raised by user code, for a ConfigError."""
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _show(value: Any, limit: int = 200) -> str:
    """repr(value) cut to `limit` characters; never fails (a huge int has no repr)."""
    try:
        text = repr(value)
    except Exception:  # ValueError: int too large to print; or a broken __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _did_you_mean(key: Any, choices: Sequence[str]) -> str:
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_literal(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    # TypeError: an unhashable key ("{[1]: 2}"); MemoryError/RecursionError: deep nesting
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _coerce(value: Any, like: Any, key: str) -> Any:
    """Return `value` converted to the type of `like` (the current value), or fail naming `key`."""
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(like, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(like, float):
        # an int too large for a float (1e309 and up) is a type error too
        if isinstance(value, int | float) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError):
                return float(value)
    elif isinstance(like, str):
        if isinstance(value, str):
            return value
    elif isinstance(like, tuple | list):
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, tuple | list):
            if like and value:
                return tuple(_coerce(v, like[0], f"{key}[{i}]") for i, v in enumerate(value))
            return tuple(value)
    else:
        return value
    raise ConfigError(
        f"config key {key!r} expects type {type(like).__name__} (current value {_show(like)}), "
        f"got {_show(value)}"
    )


def set_value(cfg: ConfigDict, key: str, value: Any) -> None:
    """Set dotted `key` in `cfg` to `value` (a string is parsed as a literal first)."""
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        keys = list(node.keys())
        if part not in keys:
            parent = ".".join(parts[:depth]) or "<top level>"
            raise ConfigError(
                f"unknown config key {where!r}{_did_you_mean(part, keys)}; "
                f"valid keys under {parent}: {', '.join(sorted(keys))}"
            )
        if depth < len(parts) - 1:
            node = node[part]
            if not isinstance(node, ConfigDict):
                raise ConfigError(f"config key {where!r} is a value, not a section")
    current = node[parts[-1]]
    if isinstance(current, ConfigDict) and isinstance(value, str) and "name" in current:
        _swap_component(node, parts[-1], key, value)
        return
    if isinstance(current, ConfigDict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} is a section; set one of its keys instead")
        for sub, sub_value in value.items():
            set_value(cfg, f"{key}.{sub}", sub_value)
        return
    if isinstance(value, str) and not isinstance(current, str):
        value = _parse_literal(value)
    with node.unlocked():
        node[parts[-1]] = _coerce(value, current, key)


def _swap_component(node: ConfigDict, field: str, key: str, name: str) -> None:
    """`--set model.fusion=cnn_rnn`: the component section `key` becomes registered component
    `name` with its Config's defaults (so its own keys can be `--set` next)."""
    registry = FUSIONS if key == "model.fusion" else ENCODERS
    if key != "model.fusion" and not key.startswith("model.encoders."):
        raise ConfigError(f"config key {key!r} is a section; set one of its keys instead")
    try:
        defaults = dataclasses.asdict(registry.get(name).Config())
    except ConfigError as err:  # it lists the registered names
        raise ConfigError(f"{key}={name}: {err}") from None
    with node.unlocked():
        node[field] = ConfigDict({"name": name, **defaults})


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """`path.to.key=value` strings (the CLI's `--set`) -> {key: value text}, in order."""
    parsed = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects path.to.key=value, got {item!r}")
        parsed[key.strip()] = text
    return parsed


def apply_overrides(cfg: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """Apply `path.to.key=value` strings (the CLI's `--set`) to `cfg` in place; return it."""
    for key, text in parse_overrides(overrides).items():
        set_value(cfg, key, text)
    return cfg


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)
    if origin is tuple:
        if isinstance(value, list | tuple):
            (item_hint, *_) = typing.get_args(hint) or (Any,)
            return tuple(_check_type(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _check_type(value, option, where)
            except ConfigError:
                continue
    elif hint is Any:
        return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # NaN slips through every `x > 0` style check; a huge int overflows float
            if (isinstance(value, float) or abs(value) < 2**1023) and math.isfinite(value):
                return float(value)
            raise ConfigError(f"config key {where!r} expects a finite float, got {_show(value)}")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not _INT64_MIN <= value <= _INT64_MAX:  # numpy, jax and grain take int64 at most
                raise ConfigError(
                    f"config key {where!r} expects an int in [-2**63, 2**63), got {_show(value)}"
                )
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(
        f"config key {where!r} expects {getattr(hint, '__name__', hint)}, got {_show(value)}"
    )


def from_mapping(cls: type, mapping: Mapping[str, Any] | ConfigDict, where: str) -> Any:
    """Build frozen dataclass `cls` from `mapping`; unknown keys and bad types are ConfigErrors."""
    if isinstance(mapping, ConfigDict):
        mapping = mapping.to_dict()
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"config key {where!r} must be a section, got {_show(mapping)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"unknown config key {_show(f'{where}.{key}')}{_did_you_mean(key, names)}; "
            f"valid keys under {where}: {', '.join(sorted(names))}"
        )
    values = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in mapping.items()}
    try:
        return cls(**values)
    except TypeError as err:  # a required field was left out
        raise ConfigError(f"config section {where!r}: {err}") from None


@dataclasses.dataclass(frozen=True)
class Component:
    """A registered component chosen by name, with its own typed config."""

    name: str
    cfg: Any


def component_from_mapping(registry: Registry, mapping: Any, where: str) -> Component:
    """Resolve `{"name": ..., **fields}` against `registry`; the class's `Config` types fields."""
    if isinstance(mapping, ConfigDict):
        mapping = mapping.to_dict()
    if not isinstance(mapping, Mapping) or "name" not in mapping:
        raise ConfigError(f"config section {where!r} needs a 'name' key ({registry.kind} name)")
    fields = dict(mapping)
    name = _check_type(fields.pop("name"), str, f"{where}.name")
    try:
        factory = registry.get(name)
    except ConfigError as err:
        raise ConfigError(f"{where}.name: {err}") from None
    return Component(name, from_mapping(factory.Config, fields, where))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoders per modality, the fusion head and the classifier size."""

    encoders: tuple[tuple[str, Component], ...]
    fusion: Component
    num_classes: int
    adversarial_weight: float = 0.0  # > 0 adds adversarial modality alignment to the loss
    # > 0: a classifier on each encoder's pooled features, its cross-entropy added with this
    # weight (train.balance=grad_blend then sets every head's weight as training goes)
    unimodal_weight: float = 0.0
    classification_weight: float = 1.0  # 0: no cross-entropy (e.g. reconstruction pretraining)
    frozen: tuple[str, ...] = ()  # modalities whose encoders keep their weights (and BN stats)
    # (modality, catalog name) pairs: encoders that start from published weights
    pretrained: tuple[tuple[str, str], ...] = ()

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.encoders)


def model_config_from(section: Mapping[str, Any] | ConfigDict) -> ModelConfig:
    """Typed ModelConfig from a `model` config section."""
    if isinstance(section, ConfigDict):
        section = section.to_dict()
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key 'model' must be a section, got {_show(section)}")
    known = {
        "encoders",
        "fusion",
        "num_classes",
        "adversarial_weight",
        "unimodal_weight",
        "classification_weight",
        "frozen",
        "pretrained",
    }
    for key in section:
        if key not in known:
            raise ConfigError(
                f"unknown config key 'model.{key}'{_did_you_mean(key, sorted(known))}; "
                f"valid keys under model: {', '.join(sorted(known))}"
            )
    encoders = section.get("encoders") or {}
    if not isinstance(encoders, Mapping) or not encoders:
        raise ConfigError(
            "config key 'model.encoders' must be a section naming at least one modality, "
            f"got {_show(encoders)}"
        )
    for modality in encoders:
        if not isinstance(modality, str) or not modality:
            raise ConfigError(
                f"config key 'model.encoders': modality names must be non-empty strings, "
                f"got {_show(modality)}"
            )
    frozen = _check_type(section.get("frozen", ()), tuple[str, ...], "model.frozen")
    unknown = sorted(set(frozen) - set(encoders))
    if unknown:
        raise ConfigError(
            f"config key 'model.frozen': {unknown} are not modalities of this model "
            f"(it has {', '.join(sorted(encoders))})"
        )
    components = tuple(
        (modality, component_from_mapping(ENCODERS, spec, f"model.encoders.{modality}"))
        for modality, spec in sorted(encoders.items())
    )
    num_classes = _check_type(section.get("num_classes"), int, "model.num_classes")
    weights = {
        name: _check_type(section.get(name, default), float, f"model.{name}")
        for name, default in (
            ("adversarial_weight", 0.0),
            ("unimodal_weight", 0.0),
            ("classification_weight", 1.0),
        )
    }
    _require(
        "model",
        {
            "num_classes": (num_classes >= 1, ">= 1"),
            "adversarial_weight": (weights["adversarial_weight"] >= 0, ">= 0 (0: none)"),
            "unimodal_weight": (weights["unimodal_weight"] >= 0, ">= 0 (0: no unimodal heads)"),
            "classification_weight": (weights["classification_weight"] >= 0, ">= 0"),
        },
    )
    pretrained = _pretrained_from(section.get("pretrained") or {}, dict(components))
    for modality, component in components:
        temporal = getattr(component.cfg, "temporal", "mean")
        if component.name == "video" and modality in frozen and temporal != "mean":
            raise ConfigError(
                f"config key 'model.encoders.{modality}.temporal' is {temporal!r}, but the "
                f"video encoder is frozen: its {temporal} model would never train; use "
                "'mean' (frozen frame features, then a trained fusion head) or unfreeze it"
            )
    return ModelConfig(
        encoders=components,
        fusion=component_from_mapping(FUSIONS, section.get("fusion"), "model.fusion"),
        num_classes=num_classes,
        frozen=tuple(sorted(frozen)),
        **weights,
        pretrained=pretrained,
    )


def _pretrained_from(
    mapping: Mapping[str, Any], components: dict[str, Component]
) -> tuple[tuple[str, str], ...]:
    """Checked (modality, catalog name) pairs of `model.pretrained`; "" means none."""
    from mmjax.pretrained.catalog import entry

    pairs = []
    mapping = _check_type(mapping, dict, "model.pretrained")
    for modality in mapping:
        if not isinstance(modality, str):
            raise ConfigError(
                f"config key 'model.pretrained': keys must be modality names, got {_show(modality)}"
            )
    for modality, name in sorted(mapping.items()):
        where = f"model.pretrained.{modality}"
        if modality not in components:
            raise ConfigError(
                f"config key {where!r}: not a modality of this model "
                f"(it has {', '.join(sorted(components))})"
            )
        if not _check_type(name, str, where):
            continue
        _check_weights_fit(entry(name), components[modality], where, modality)
        pairs.append((modality, name))
    return tuple(pairs)


def _check_weights_fit(spec: Any, component: Component, where: str, modality: str) -> None:
    """ConfigError unless catalog weights `spec` fit the encoder: the same encoder with the
    Config fields the weights pin, or a video encoder whose frames are that encoder (built
    with its default Config and the video's in_channels)."""
    config, section = component.cfg, f"model.encoders.{modality}"
    if component.name == "video" and component.cfg.frame_encoder == spec.encoder:
        frame_config = ENCODERS.get(spec.encoder).Config()
        if any(f.name == "in_channels" for f in dataclasses.fields(frame_config)):
            frame_config = dataclasses.replace(frame_config, in_channels=config.in_channels)
        config, section = frame_config, f"model.encoders.{modality} (its {spec.encoder} frames)"
    elif component.name != spec.encoder:
        frames = (
            f" with frame_encoder={spec.encoder}"
            if ENCODERS.get(spec.encoder).modality == "image"
            else ""
        )
        raise ConfigError(
            f"config key {where!r}: {spec.name!r} is a {spec.encoder} encoder, but "
            f"model.encoders.{modality} is {component.name}"
            + (f" (a video encoder takes it{frames})" if frames else "")
        )
    for field, value in spec.config.items():
        if getattr(config, field) != value:
            raise ConfigError(
                f"config key '{section}.{field}' is {getattr(config, field)!r}; "
                f"pretrained {spec.name!r} needs {value!r}"
            )


def _require(section: str, checks: dict[str, tuple[bool, str]]) -> None:
    """Raise a ConfigError for the first field whose check failed: {field: (ok, expectation)}."""
    for name, (ok, expected) in checks.items():
        if not ok:
            raise ConfigError(f"config key '{section}.{name}' must be {expected}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay; optional global-norm clipping."""

    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.999

    def __post_init__(self):
        _require(
            "optim",
            {
                "learning_rate": (self.learning_rate > 0, "> 0"),
                "weight_decay": (self.weight_decay >= 0, ">= 0"),
                "warmup_steps": (self.warmup_steps >= 0, ">= 0"),
                "grad_clip": (self.grad_clip >= 0, ">= 0 (0: no clipping)"),
                "b1": (0 <= self.b1 < 1, "in [0, 1)"),
                "b2": (0 <= self.b2 < 1, "in [0, 1)"),
            },
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and the noise added to each modality."""

    name: str = "avdigits"
    root: str = ""  # empty: $MMJAX_DATA or ~/.cache/mmjax
    image_noise: float = 0.0  # std of Gaussian noise on images in [0, 1]
    audio_snr_db: float = 100.0  # SNR of white noise added to audio; 100 or more: no noise
    modality_dropout: float = 0.0  # training-time probability of masking each modality
    # Training-time noise levels: each example's image and audio noise scaled by its own
    # uniform draw in [0, 1], from none up to image_noise / audio_snr_db (evaluation keeps
    # the set level).
    noise_levels: bool = False
    workers: int = 0  # grain worker processes; 0 reads in the training process
    # A directory from `mmjax features extract`: frozen encoders' outputs stand in for
    # their inputs, so training skips those encoders.
    features: str = ""

    def __post_init__(self):
        _require(
            "data",
            {
                "name": (bool(self.name), "a registered dataset name"),
                "image_noise": (self.image_noise >= 0, ">= 0"),
                "modality_dropout": (0 <= self.modality_dropout < 1, "in [0, 1)"),
                "workers": (self.workers >= 0, ">= 0"),
            },
        )


COMPUTE_DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "skip")
BALANCE_METHODS = ("none", "ogm_ge", "grad_blend")
KEEP_BEST_METRICS = ("accuracy", "macro_f1", "loss")  # what train.keep_best may watch


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """How the train state is laid out over the devices of every process.

    The mesh is `data x fsdp` over all devices; the batch is split over both axes. With
    fsdp > 1 every state array of at least `fsdp_min_size` elements is split over `fsdp` along
    its largest axis divisible by it (ZeRO-3 style); smaller ones are replicated.
    """

    fsdp: int = 1
    fsdp_min_size: int = 2**14

    def __post_init__(self):
        _require(
            "parallel",
            {"fsdp": (self.fsdp >= 1, ">= 1"), "fsdp_min_size": (self.fsdp_min_size >= 1, ">= 1")},
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop lengths and cadences; batch sizes are global (over all devices and hosts)."""

    seed: int = 0
    # The seed of the training batch order (and of the training noise and modality dropout
    # drawn with it); -1: `seed`. A sweep's copies with one batch order share it.
    data_seed: int = -1
    batch_size: int = 64
    steps: int = 1000
    log_every: int = 25
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    eval_batch_size: int = 100
    eval_splits: tuple[str, ...] = ("test",)
    # Fine-tuning: a fresh run copies these modules' parameters (and batch statistics) from
    # the latest checkpoint of the workdir `init_from`; a resumed run ignores both.
    init_from: str = ""
    init_modules: tuple[str, ...] = ("encoders",)
    # Each step averages the gradients of this many equal micro-batches of batch_size (the
    # same update as the whole batch, in 1/grad_accum_steps of the activation memory).
    grad_accum_steps: int = 1
    # "bfloat16": the forward and backward pass run in bfloat16 on a cast of the float32
    # parameters, which (with the optimizer state) stay float32.
    compute_dtype: str = "float32"
    # A step whose loss or gradient is NaN/inf never changes the state. "stop" ends the run
    # naming the step and the last good checkpoint; "skip" drops that batch and goes on.
    on_nonfinite: str = "stop"
    # Modality balancing (`mmjax.train.balance`): "ogm_ge" modulates each encoder's gradient
    # by how much its modality dominates, with strength `balance_alpha`, for the first
    # `balance_until` share of the steps; "grad_blend" sets the weights of the fused and the
    # unimodal heads' losses (model.unimodal_weight > 0) every `balance_every` steps.
    balance: str = "none"
    balance_alpha: float = 0.5
    balance_until: float = 0.5
    balance_every: int = 100  # grad_blend: steps between two updates of the loss weights
    # Every N steps (0: never), log how much the model uses each modality: the accuracy on
    # one val batch (`val_batch_accuracy`) and its drop with modality m masked out
    # (`utilisation_<m>`).
    utilisation_every: int = 0
    # Every N steps (0: never), log few-shot linear-probe accuracy of the fused vector on val
    # (`fewshot_<k>shot`), k examples per class from the train split (`mmjax.fewshot`).
    fewshot_every: int = 0
    fewshot_shots: tuple[int, ...] = (1, 5)
    # Every N steps (0: only after the last step), evaluate one split (keep_best's, else val)
    # and log `<split>/accuracy`, `<split>/macro_f1` and `<split>/loss`.
    eval_every: int = 0
    # "SPLIT/METRIC" (METRIC: accuracy, macro_f1 or loss): also keep the checkpoint that
    # scored best on it, in WORKDIR/best/ (needs eval_every).
    keep_best: str = ""
    # Stop after this many evaluations in a row without a new best keep_best (0: never).
    early_stop_patience: int = 0

    @property
    def order_seed(self) -> int:
        """The seed of the training batch order: `data_seed`, or `seed` when it is -1."""
        return self.seed if self.data_seed < 0 else self.data_seed

    def __post_init__(self):
        positive = ("batch_size", "steps", "log_every", "checkpoint_every", "keep_checkpoints")
        _require(
            "train",
            {
                "seed": (self.seed >= 0, ">= 0"),  # numpy's and grain's seeds are non-negative
                "data_seed": (self.data_seed >= -1, ">= 0, or -1 for train.seed"),
                **{
                    name: (getattr(self, name) >= 1, ">= 1")
                    for name in (*positive, "eval_batch_size", "grad_accum_steps")
                },
            },
        )
        _require(
            "train",
            {
                "batch_size": (
                    self.batch_size % self.grad_accum_steps == 0,
                    f"divisible by train.grad_accum_steps ({self.grad_accum_steps})",
                ),
                "compute_dtype": (
                    self.compute_dtype in COMPUTE_DTYPES,
                    f"one of {', '.join(COMPUTE_DTYPES)}",
                ),
                "on_nonfinite": (
                    self.on_nonfinite in NONFINITE_POLICIES,
                    f"one of {', '.join(NONFINITE_POLICIES)}",
                ),
                "balance": (
                    self.balance in BALANCE_METHODS,
                    f"one of {', '.join(BALANCE_METHODS)}",
                ),
                "balance_alpha": (self.balance_alpha > 0, "> 0"),
                "utilisation_every": (self.utilisation_every >= 0, ">= 0 (0: never)"),
                "balance_every": (self.balance_every >= 1, ">= 1"),
                "fewshot_every": (self.fewshot_every >= 0, ">= 0 (0: never)"),
                "fewshot_shots": (
                    bool(self.fewshot_shots) and min(self.fewshot_shots) >= 1,
                    "a non-empty list of whole numbers >= 1",
                ),
                "balance_until": (0 <= self.balance_until <= 1, "a share of the steps in [0, 1]"),
            },
        )
        split, _, metric = self.keep_best.partition("/")
        _require(
            "train",
            {
                "eval_every": (self.eval_every >= 0, ">= 0 (0: only after the last step)"),
                "keep_best": (
                    not self.keep_best or (bool(split) and metric in KEEP_BEST_METRICS),
                    f"SPLIT/METRIC with METRIC one of {', '.join(KEEP_BEST_METRICS)} "
                    "(like val/accuracy), or empty",
                ),
                "early_stop_patience": (self.early_stop_patience >= 0, ">= 0 (0: never)"),
            },
        )
        _require(
            "train",
            {
                "keep_best": (
                    not self.keep_best or self.eval_every > 0,
                    "used with train.eval_every > 0 (the evaluations it compares)",
                ),
                "early_stop_patience": (
                    not self.early_stop_patience or bool(self.keep_best),
                    "used with train.keep_best (the metric it watches)",
                ),
            },
        )
        _require(
            "train",
            {
                "init_modules": (
                    not self.init_from or bool(self.init_modules),
                    "a non-empty list of module paths (like 'encoders.audio') with init_from",
                )
            },
        )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything `mmjax.train` needs, typed."""

    model: ModelConfig
    optim: OptimConfig
    data: DataConfig
    train: TrainConfig
    parallel: ParallelConfig = ParallelConfig()


def as_json_dict(config: ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """`config` as the plain JSON dict a checkpoint stores (tuples become lists)."""
    raw = config.to_dict() if isinstance(config, ConfigDict) else dict(config)
    try:
        return json.loads(json.dumps(raw))
    except (TypeError, ValueError, RecursionError) as err:  # bytes, sets, objects, ...
        raise ConfigError(
            f"a config may hold only JSON values (numbers, strings, lists, sections): {err}"
        ) from None


def experiment_from(cfg: ConfigDict | Mapping[str, Any]) -> ExperimentConfig:
    """Typed ExperimentConfig from a whole experiment ConfigDict."""
    if isinstance(cfg, ConfigDict):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"an experiment config must be a ConfigDict or dict, got {_show(cfg)}")
    known = {"model", "optim", "data", "train", "parallel"}
    for key in cfg:
        if key not in known:
            raise ConfigError(
                f"unknown config key {_show(key)}; valid top-level keys: {', '.join(sorted(known))}"
            )
    return ExperimentConfig(
        model=model_config_from(cfg.get("model", {})),
        optim=from_mapping(OptimConfig, cfg.get("optim", {}), "optim"),
        data=from_mapping(DataConfig, cfg.get("data", {}), "data"),
        train=from_mapping(TrainConfig, cfg.get("train", {}), "train"),
        parallel=from_mapping(ParallelConfig, cfg.get("parallel", {}), "parallel"),
    )
