"""Reading traced programs (jaxprs) in tests."""

from collections.abc import Iterator

import jax
from jax.extend.core import Jaxpr, JaxprEqn


def equations(jaxpr: Jaxpr) -> Iterator[JaxprEqn]:
    """Every equation of `jaxpr` and of the jaxprs nested in its equations (jit, cond, scan)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for inner in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from equations(inner)


def primitives(jaxpr: Jaxpr) -> set[str]:
    """Names of the primitives in `jaxpr`, nested jaxprs included."""
    return {eqn.primitive.name for eqn in equations(jaxpr)}
