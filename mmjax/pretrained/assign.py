"""Put published weights into an mmjax module through an explicit name table."""

import fnmatch
from collections.abc import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.errors import CheckpointError

Path = tuple[str | int, ...]


def assign(
    module: nnx.Module,
    table: Mapping[Path, np.ndarray],
    *,
    source: str,
    unused: Iterable[str] = (),
) -> None:
    """Set every Param and BatchStat of `module` from `table` {module path: array}, in place.

    The table must cover the module exactly with the same shapes, and `unused` lists the
    source names the table left out (for the error message); anything else is a
    CheckpointError naming `source` and the offending names.
    """
    state = nnx.state(module, (nnx.Param, nnx.BatchStat))
    flat = dict(nnx.to_flat_state(state))
    missing = sorted("/".join(map(str, p)) for p in flat.keys() - table.keys())
    extra = sorted("/".join(map(str, p)) for p in table.keys() - flat.keys())
    if missing or extra:
        raise CheckpointError(
            f"{source}: the name table does not fit {type(module).__name__} "
            f"(not in the file: {missing[:5]}; not in the model: {extra[:5]})"
        )
    unused = sorted(unused)
    if unused:
        raise CheckpointError(f"{source}: weights the name table does not place: {unused[:8]}")
    arrays = {}
    for path, variable in flat.items():
        value = np.asarray(table[path])
        if value.shape != variable.shape:
            raise CheckpointError(
                f"{source}: {'/'.join(map(str, path))} has shape {value.shape} in the file, "
                f"the model expects {variable.shape}"
            )
        arrays[path] = jnp.asarray(value, variable.dtype)
    nnx.update(module, nnx.from_flat_state(arrays))


class TrackedWeights(Mapping[str, np.ndarray]):
    """A file's {name: array} that remembers which names a name table read, so the names it
    never placed can be reported instead of silently dropped."""

    def __init__(self, weights: Mapping[str, np.ndarray], source: str):
        self._weights, self.source, self.read = weights, source, set()

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._weights:
            raise CheckpointError(f"{self.source}: no weight named {name!r} in the file")
        self.read.add(name)
        return self._weights[name]

    def __contains__(self, name: object) -> bool:
        return name in self._weights

    def __iter__(self):
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def unread(self, ignored: Iterable[str] = ()) -> set[str]:
        """Names never read that match none of the `ignored` fnmatch patterns."""
        patterns = list(ignored)
        return {
            name
            for name in set(self._weights) - self.read
            if not any(fnmatch.fnmatchcase(name, p) for p in patterns)
        }
