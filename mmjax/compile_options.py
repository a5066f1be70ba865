"""The XLA compile options of mmjax's programs: the init program, and the programs that run a
model (train, eval, predict and feature steps). GPU/TPU compiles get XLA's defaults."""

import functools
from importlib.metadata import version

import jax

# jaxlib 0.10.x's default YNNPACK fusion list without INDIVIDUAL_CONVOLUTION (the option takes
# the whole list; these enum names exist in jaxlib 0.10.0, 0.10.1, 0.10.2 and 0.12.1).
_YNNPACK_WITHOUT_CONVOLUTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def init_compiler_options() -> dict[str, int] | None:
    """XLA options for the init program, which runs once per run: on the CPU, the LLVM
    backend at level 1 instead of 3. Its values are bit-identical (tests/test_train_step.py)
    and it compiles in about half the time (resnet18_bilstm_late 7.9 -> 3.8 s, avdigits_audio
    2.3 -> 1.0 s)."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


@functools.cache
def _jaxlib_0_10() -> bool:
    major, minor = (int(part) for part in version("jaxlib").split(".")[:2])
    return (major, minor) == (0, 10)


def model_compiler_options() -> dict[str, str]:
    """`jax.jit(..., compiler_options=...)` for a program that runs a model.

    jaxlib 0.10 (the newest JAX for Python 3.11) hands every convolution on XLA:CPU to
    YNNPACK, which runs the small and mid-sized convolutions of mmjax's CNNs slower than XLA's
    own (benchmarks/NOTES.md, ninth session): the AV-Digits image CNN's 4 x 4 x 32 -> 64 conv
    took 383-400 us forward in YNNPACK against 272-281 us. There, YNNPACK keeps the matmuls
    and reductions, which it runs well, and XLA the convolutions. jaxlib 0.12.1's YNNPACK is
    the faster one (the image CNN's train step took 2.1 ms with it, 3.5 ms without), so later
    jaxlibs get XLA's defaults.
    """
    if _jaxlib_0_10() and jax.default_backend() == "cpu":
        return dict(_YNNPACK_WITHOUT_CONVOLUTIONS)
    return {}
