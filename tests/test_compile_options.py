"""compile_options.model_compiler_options: under jaxlib 0.10 on the CPU, the compiled train
and eval steps leave convolutions to XLA and keep YNNPACK for matmuls, where XLA's default
sends the convolutions to YNNPACK too; on other jaxlibs, XLA's defaults."""

import collections
import re

import jax
import pytest

from mmjax import compile_options
from mmjax.config import experiment_from
from mmjax.parallel import data_mesh, put_batch
from mmjax.registry import MODELS
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import make_eval_step, make_train_step
from tests.batches import avdigits_batches

jaxlib_0_10 = pytest.mark.skipif(
    not compile_options._jaxlib_0_10(), reason="the option is applied under jaxlib 0.10 only"
)


def _ynn_fusion_roots(hlo: str) -> collections.Counter:
    """The root op of each YNNPACK fusion in an optimized HLO module's text."""
    roots = collections.Counter()
    for called in re.findall(r'calls=(%[\w.]+), [^\n]*"kind":"__ynn_fusion"', hlo):
        body = hlo[hlo.index(f"{called} (") :]
        roots[re.search(r"ROOT \S+ = \S+ ([\w-]+)\(", body[: body.index("\n}")]).group(1)] += 1
    return roots


@pytest.fixture(scope="module")
def image_step_inputs():
    section = MODELS.get("avdigits_image")()  # its real (32, 64) channels: YNNPACK takes
    section["encoders"]["image"]["dim"] = 16  # no conv of 8 -> 16 channels at batch 4
    exp = experiment_from({"model": section, "train": {"batch_size": 4, "steps": 1}})
    mesh = data_mesh(jax.devices()[:1])
    graphdef, state = init_state(exp, mesh)
    rows = next(avdigits_batches(1, 4, 100))
    batch = put_batch({k: rows[k] for k in ("image", "image_mask", "label")}, mesh)
    return graphdef, state, batch, mesh


@jaxlib_0_10
def test_model_programs_leave_convolutions_to_xla(image_step_inputs):
    graphdef, state, batch, mesh = image_step_inputs
    shardings = state_shardings(state, mesh)
    train = make_train_step(graphdef, shardings, mesh).lower(state, batch).compile().as_text()
    evaluate = make_eval_step(graphdef, shardings, mesh)
    valid = put_batch({"valid": batch["label"] >= 0}, mesh)["valid"]
    evaluated = evaluate.lower(state, batch, valid).compile().as_text()
    for hlo in (train, evaluated):
        assert re.search(r"= f32\[[^\n]*\bconvolution\(", hlo)  # the model's convs are there
        roots = _ynn_fusion_roots(hlo)
        assert roots["dot"] > 0 and roots["convolution"] == 0, roots
    # XLA's own default: the same program's convolutions inside YNNPACK fusions.
    plain = jax.jit(make_train_step(graphdef, shardings, mesh).__wrapped__)
    assert _ynn_fusion_roots(plain.lower(state, batch).compile().as_text())["convolution"] > 0


def test_other_jaxlibs_and_backends_get_xla_defaults(monkeypatch):
    monkeypatch.setattr(compile_options, "_jaxlib_0_10", lambda: False)
    assert compile_options.model_compiler_options() == {}
    monkeypatch.setattr(compile_options, "_jaxlib_0_10", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert compile_options.model_compiler_options() == {}
