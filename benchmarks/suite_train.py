"""train: the whole train step (forward, backward, AdamW update, metrics) as `mmjax train`
runs it, on one device and on the data-parallel mesh over every device.

The batch is device-resident (placed once), so this is the step's own speed; the pipeline
suite measures what feeding it costs. ResNet-50 in bfloat16 is the accelerator anchor (MLPerf
reaches 7,960 img/s per H200, about 20 % MFU; our goal is 4,000, about 10 %): there its params,
activations and optimizer state are all bfloat16 (a cast of the float32 state; BatchNorm
statistics stay float32, as flax keeps them). Variant `train_step_mixed` is mmjax's own mixed
precision (`train.compute_dtype=bfloat16`): float32 state, bfloat16 forward and backward.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import inputs
from benchmarks.harness import Context, Planned, timed
from mmjax.config import experiment_from
from mmjax.models.zoo import _model
from mmjax.parallel import data_mesh, put_batch
from mmjax.registry import MODELS
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import LeafTrainStep


@dataclasses.dataclass(frozen=True)
class Case:
    """One model at one batch size; `batch_fn(size)` makes its host batch."""

    name: str
    section: dict
    batch: int
    image: int = 0  # image side (0: no image input)
    text: int = 0  # text tokens (0: no text input)
    audio: int = 0  # audio samples (0: no audio input)
    dtype: str = "float32"
    mixed: bool = False  # float32 state computed in `dtype` (train.compute_dtype)


def _resnet50(classes: int = 1000, **image_fields) -> dict:
    spec = {"name": "resnet50", "in_channels": 3, **image_fields}
    return _model({"image": spec}, {"name": "late_concat", "hidden": 512}, num_classes=classes)


def cases(ctx: Context) -> list[Case]:
    late, early, rb = (
        MODELS.get(n)() for n in ("avdigits_late", "avdigits_early", "resnet18_bilstm_late")
    )
    if ctx.smoke:  # the bfloat16 path on a tiny model; ResNet-50 only at full sizes
        small = inputs.smoke_section(MODELS.get("avdigits_late")())
        return [
            Case("avdigits_late", small, 4, image=8, audio=2000),
            Case("avdigits_late", small, 4, image=8, audio=2000, dtype="bfloat16"),
            Case("avdigits_late", small, 4, image=8, audio=2000, dtype="bfloat16", mixed=True),
        ]
    if ctx.accelerator:
        return [
            Case("avdigits_late", late, 256, image=8, audio=8000),
            Case("resnet18_bilstm_late", rb, 256, image=32, text=32),
            Case("resnet50", _resnet50(), 256, image=224, dtype="bfloat16"),
            Case("resnet50", _resnet50(), 256, image=224, dtype="bfloat16", mixed=True),
            Case("resnet50", _resnet50(), 256, image=224),
        ]
    return [
        Case("avdigits_late", late, 64, image=8, audio=8000),
        Case("avdigits_early", early, 64, image=8, audio=8000),
        Case("resnet18_bilstm_late", rb, 32, image=32, text=32),
        Case("resnet50", _resnet50(), 16, image=64),
        Case("resnet50", _resnet50(), 16, image=64, dtype="bfloat16"),
        Case("resnet50", _resnet50(), 16, image=64, dtype="bfloat16", mixed=True),
    ]


def host_batch(case: Case, classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    channels = case.section["encoders"].get("image", {}).get("in_channels", 1)
    batch = {"label": inputs.label_batch(case.batch, classes)}
    if case.image:
        side = case.image
        batch["image"] = rng.random((case.batch, side, side, channels), np.float32)
    if case.audio:
        batch["audio"] = rng.standard_normal((case.batch, case.audio), np.float32)
    if case.text:
        vocab = case.section["encoders"]["text"]["vocab_size"]
        batch["text"] = rng.integers(1, vocab, (case.batch, case.text), np.int32)
    for m in case.section["encoders"]:
        batch[f"{m}_mask"] = np.ones(case.batch, bool)
    return batch


def _cast(tree, dtype: str):
    """Every floating leaf of `tree` in `dtype` (integers, bools and keys unchanged) except
    BatchNorm statistics: flax keeps them in float32 and computes their update in float32,
    which a bfloat16 copy could only take with a lossy cast (JAX's FutureWarning "scatter
    inputs have incompatible types", an error in a future JAX)."""

    def cast(x):
        if isinstance(x, nnx.BatchStat):
            return x
        floating = hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
        return x.astype(dtype) if floating else x

    return jax.tree.map(cast, tree, is_leaf=lambda x: isinstance(x, nnx.BatchStat))


def _mesh_sizes(case: Case) -> list[int]:
    """Devices per mesh: one, and every device for a float32 case when there are several."""
    return [1, jax.device_count()] if jax.device_count() > 1 and case.dtype == "float32" else [1]


def _variant(case: Case) -> str:
    return "train_step_mixed" if case.mixed else "train_step"


def plan(ctx: Context) -> list[Planned]:
    """Each case on each of its meshes."""
    planned = []
    for case in cases(ctx):
        sizes = {"image": case.image, "text": case.text, "audio": case.audio}
        shapes = ", ".join(f"{name} {size}" for name, size in sizes.items() if size)
        state = ", float32 state" if case.mixed else ""
        planned += [
            Planned("train", case.name, _variant(case), case.batch, case.dtype, note)
            for note in (f"data={n}, {shapes}{state}" for n in _mesh_sizes(case))
        ]
    return planned


def run(ctx: Context) -> None:
    for case in cases(ctx):
        meshes = [data_mesh(jax.devices()[:size]) for size in _mesh_sizes(case)]
        exp = experiment_from(
            {"model": case.section, "train": {"batch_size": case.batch, "steps": 1000}}
        )
        host = host_batch(case, exp.model.num_classes)
        for mesh in meshes:
            graphdef, state = init_state(exp, mesh)
            stored = "float32" if case.mixed else case.dtype
            state = _cast(state, stored)
            batch = put_batch(_cast(host, stored), mesh)
            step = LeafTrainStep(  # the program the training loop runs
                graphdef,
                state_shardings(state, mesh, exp.parallel),
                mesh,
                compute_dtype=case.dtype if case.mixed else "float32",
            )
            ctx.record(
                "train",
                model=case.name,
                modality="+".join(exp.model.modalities),
                variant=_variant(case),
                batch=case.batch,
                shapes={k: list(v.shape) for k, v in host.items()},
                dtype=case.dtype,
                mesh=f"data={mesh.size}",
                **timed(
                    ctx,
                    step.jitted,
                    (step.leaves(state), batch),
                    batch=case.batch,
                    dtype=case.dtype,
                    devices=mesh.size,
                    carry=True,
                ),
            )
