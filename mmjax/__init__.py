"""mmjax: a JAX/Flax NNX model zoo for multimodal learning.

The library loads on first use of any public name (PEP 562), so that `mmjax.load_exported`
runs an exported model where only jax and numpy are installed: no flax, no model code.
"""

import importlib
from typing import Any

# `mmjax.train` is the training function. Its subpackage (empty, cheap) is imported now, so that
# no later `import mmjax.train.<module>` rebinds the name, and the name is then freed for
# `__getattr__` to give the function.
import mmjax.train  # noqa: F401
from mmjax.host_heap import retain_freed_memory

del train  # noqa: F821

__version__ = "0.1.0"

retain_freed_memory()  # XLA's freed buffers stay in the process (mmjax/host_heap.py)


def __getattr__(name: str) -> Any:
    if name == "load_exported":
        from mmjax.exported import load_exported

        return load_exported
    if name.startswith("__"):
        raise AttributeError(name)
    api = importlib.import_module("mmjax.api")
    value = globals().get(name, getattr(api, name, None))  # a submodule api imported, or a name
    if value is None:
        raise AttributeError(f"module 'mmjax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CATALOG",
    "DATASETS",
    "ENCODERS",
    "FUSIONS",
    "MODELS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InputError",
    "MmjaxError",
    "MultimodalModel",
    "Predictor",
    "PretrainedModel",
    "create_model",
    "data",
    "evaluate_workdir",
    "fit",
    "list_models",
    "load_config_file",
    "load_encoder",
    "load_exported",
    "load_predictor",
    "load_pretrained",
    "log_to_stderr",
    "published_names",
    "save_pretrained",
    "sweep",
    "train",
]
