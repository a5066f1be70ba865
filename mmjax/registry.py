"""One small registry class; one instance per kind of component."""

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from mmjax.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Maps names to factories; `register` is a decorator, `get` fails with the choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        _register_builtins()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        _register_builtins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        _register_builtins()
        return name in self._items


def _register_builtins() -> None:
    """Import mmjax's public API, whose modules register the built-in components and datasets
    as they load (`mmjax` itself loads it only on first use); a no-op once it is loaded."""
    importlib.import_module("mmjax.api")


ENCODERS: Registry = Registry("encoder")
FUSIONS: Registry = Registry("fusion")
MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")
