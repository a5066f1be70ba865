"""Robustness of a trained model: accuracy under each modality's imperfections at every level
(`mmjax.corruptions`) and with each modality removed, and MultiBench's summaries of the curves.

One pass over the split: each batch is decoded once (with the run's own evaluation noise, so
level 0 is plain evaluation) and then corrupted per (modality, corruption, level), each with its
own generator seeded from (seed, batch, modality, corruption, level), so a curve does not
depend on which others are measured. A modality given as cached encoder features has no raw
input to corrupt: it gets only the removal.
"""

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmjax.corruptions import CORRUPTIONS, LEVELS
from mmjax.data import pipeline, sources
from mmjax.errors import ConfigError
from mmjax.folders import output_folder
from mmjax.predict import Predictor
from mmjax.progress import progress_bar
from mmjax.registry import ENCODERS


def relative_robustness(accuracy: Sequence[float]) -> float:
    """MultiBench's relative robustness (Liang et al., NeurIPS 2021 Datasets and Benchmarks;
    its `eval_scripts/robustness.py`): the area under the accuracy-vs-imperfection curve,
    its levels spread evenly over [0, 1], by the trapezoid rule. MultiBench has 11 levels
    (0, 0.1, .., 1), this module 10 (0, 1/9, .., 1)."""
    a = np.asarray(accuracy, np.float64)
    return float(np.sum((a[1:] + a[:-1]) / 2) / (len(a) - 1))


def effective_robustness(accuracy: Sequence[float], reference: Sequence[float]) -> float:
    """MultiBench's effective robustness: how far the curve stays above the reference's
    (late fusion's) curve shifted to start at the same clean accuracy, f_i - (r_i - r_0 + f_0).
    MultiBench sums this over its levels; here it is the mean over levels, in accuracy units,
    so that a curve of another length reads the same."""
    f, r = np.asarray(accuracy, np.float64), np.asarray(reference, np.float64)
    if f.shape != r.shape:
        raise ConfigError(f"reference curve has {len(r)} levels, this one {len(f)}")
    return float(np.mean(f - (r - r[0] + f[0])))


def _kinds(predictor: Predictor) -> dict[str, str]:
    """{modality: the input kind its encoder reads (image, audio, text, video)}."""
    return {m: ENCODERS.get(c.name).modality for m, c in predictor.experiment.model.encoders}


def corruption_plan(
    predictor: Predictor, corruptions: Sequence[str] = (), cached: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """(modality, corruption name) pairs to measure: every corruption of every modality's kind,
    or those named in `corruptions` ("NAME" for every modality it applies to, or
    "MODALITY:NAME"); modalities in `cached` (features, not inputs) have none."""
    kinds = _kinds(predictor)
    available = [
        (m, name) for m, kind in kinds.items() if m not in cached for name in CORRUPTIONS[kind]
    ]
    if not corruptions:
        return available
    names = ", ".join(f"{m}:{n}" for m, n in available) or "none"
    plan = []
    for wanted in corruptions:
        modality, _, name = wanted.rpartition(":")
        chosen = [(m, n) for m, n in available if n == name and modality in ("", m)]
        if not chosen:
            raise ConfigError(
                f"--corruptions: {wanted!r} is not a corruption of this model's inputs; it "
                f"has {names}"
            )
        plan += [c for c in chosen if c not in plan]
    return plan


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """`levels` sorted, with level 0 (the clean reference); ConfigError outside 0..LEVELS-1."""
    bad = [lv for lv in levels if not 0 <= lv < LEVELS]
    if bad:
        raise ConfigError(f"--levels: {bad} are not levels; levels run from 0 to {LEVELS - 1}")
    return tuple(sorted({0, *levels}))


def measure(
    predictor: Predictor,
    split: str = "test",
    *,
    seed: int = 0,
    corruptions: Sequence[str] = (),
    levels: Sequence[int] = tuple(range(LEVELS)),
    data_root: str = "",
    reference: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy on `split` at each level of each corruption (`corruption_plan`) and with each
    modality removed, with MultiBench's relative robustness per curve, and its effective
    robustness against `reference` (another model's result of this function: late fusion's,
    as in MultiBench), where every level was measured. `progress`: a bar over the batches on
    stderr."""
    exp = predictor.experiment
    data = dataclasses.replace(exp.data, root=data_root or exp.data.root)
    levels = check_levels(levels)
    modalities = predictor.modalities
    batches = pipeline.eval_batches(data, modalities, split, exp.train.eval_batch_size)
    first = next(batches, None)
    if first is None:
        raise ConfigError(f"split {split!r} of {data.name!r} has no records to evaluate")
    plan = corruption_plan(predictor, corruptions, [m for m in modalities if m not in first[0]])
    kinds = _kinds(predictor)
    curves = [(m, name, lv) for m, name in plan for lv in levels if lv > 0]
    correct = {"clean": 0} | {f"without {m}": 0 for m in modalities} | dict.fromkeys(curves, 0)
    examples = 0
    records = sources.open_source(data).info["splits"][split]["num_records"]
    bar = progress_bar(
        itertools.chain([first], batches),
        total=math.ceil(records / exp.train.eval_batch_size),
        enabled=progress,
        desc=f"robustness ({1 + len(modalities) + len(curves)} conditions per batch)",
        unit="batch",
    )
    for index, (batch, rows) in enumerate(bar):
        labels = batch.pop("label")[:rows]
        examples += rows
        for key, seen in _views(batch, index, curves, modalities, kinds, seed, predictor.dataset):
            predicted = predictor.batch_proba(seen)[:rows].argmax(-1)
            correct[key] += int(np.sum(predicted == labels))
    accuracy = {k: v / examples for k, v in correct.items()}
    result = {
        "split": split,
        "seed": seed,
        "examples": examples,
        "levels": list(levels),
        "clean": accuracy["clean"],
        "removed": {m: accuracy[f"without {m}"] for m in modalities},
        "curves": [],
    }
    for m, name in plan:
        corruption = CORRUPTIONS[kinds[m]][name]
        curve = [accuracy["clean"]] + [accuracy[(m, name, lv)] for lv in levels if lv > 0]
        result["curves"].append(
            {
                "modality": m,
                "corruption": name,
                "parameter": corruption.parameter,
                "values": [_finite_or_none(corruption.values[lv]) for lv in levels],
                "accuracy": curve,
                "relative_robustness": relative_robustness(curve) if len(curve) == LEVELS else None,
                # Where the corrupted input hurts more than no input: fusion that is worse than
                # masking the modality out (and so than the other modalities alone).
                "levels_below_removal": [
                    lv for lv, a in zip(levels, curve) if a < result["removed"][m]
                ],
            }
        )
    return against(result, reference)


def against(result: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """`result` (of `measure`) with each curve's effective robustness against the same curve of
    `reference` (None where either lacks a level or the reference lacks the curve), and the
    summary over the curves."""
    by_key = {(c["modality"], c["corruption"]): c for c in (reference or {}).get("curves", [])}
    curves = []
    for curve in result["curves"]:
        ref = by_key.get((curve["modality"], curve["corruption"]))
        complete = ref and len(ref["accuracy"]) == len(curve["accuracy"]) == LEVELS
        effective = effective_robustness(curve["accuracy"], ref["accuracy"]) if complete else None
        curves.append({**curve, "effective_robustness": effective})
    result = {**result, "curves": curves}
    return {**result, "summary": _summary(result)}


def _views(
    batch: dict[str, np.ndarray],
    index: int,
    curves: list[tuple[str, str, int]],
    modalities: tuple[str, ...],
    kinds: dict[str, str],
    seed: int,
    dataset: dict[str, Any],
) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
    """(condition, the batch as the model sees it under it), one at a time: clean, each
    modality removed, each (modality, corruption, level) of `curves`."""
    yield "clean", batch
    for m in modalities:
        yield f"without {m}", {**batch, f"{m}_mask": np.zeros_like(batch[f"{m}_mask"])}
    for m, name, level in curves:
        corruption = CORRUPTIONS[kinds[m]][name]
        which = list(CORRUPTIONS[kinds[m]]).index(name)
        rng = np.random.default_rng([seed, index, modalities.index(m), which, level])
        yield (m, name, level), corruption.apply(batch, m, corruption.values[level], rng, dataset)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _summary(result: dict[str, Any]) -> dict[str, float | None]:
    """Means over the curves (None where no curve has the number) and the worst removal."""

    def mean(key: str) -> float | None:
        values = [c[key] for c in result["curves"] if c[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "relative_robustness": mean("relative_robustness"),
        "effective_robustness": mean("effective_robustness"),
        "worst_removed": min(result["removed"].values()),
        "curves_below_removal": sum(bool(c["levels_below_removal"]) for c in result["curves"]),
    }


def _label(curve: dict[str, Any]) -> str:
    """ "white_noise (SNR in dB: 30 -> -10)": the corruption and its parameter's range."""
    values = [v for v in curve["values"][1:] if v is not None]
    span = " -> ".join(f"{v:.3g}" for v in dict.fromkeys([values[0], values[-1]])) if values else ""
    return f"{curve['corruption']} ({curve['parameter'].split(' (')[0]}: {span})"


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    """The curves as a PNG: a panel per modality, accuracy against the imperfection level, with
    the accuracy without that modality as a dashed line."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "plotting robustness curves needs matplotlib: pip install 'matplotlib>=3.8'"
        ) from None
    modalities = list(result["removed"])
    figure = Figure(figsize=(5.2 * len(modalities), 4.2), layout="constrained")
    axes = figure.subplots(1, len(modalities), squeeze=False)[0]
    x_of = {lv: lv / (LEVELS - 1) for lv in range(LEVELS)}
    for ax, m in zip(axes, modalities):
        curves = [c for c in result["curves"] if c["modality"] == m]
        for curve in curves:
            ax.plot(
                [x_of[lv] for lv in result["levels"]], curve["accuracy"], "o-", label=_label(curve)
            )
        ax.axhline(result["removed"][m], color="black", linestyle="--", label=f"{m} removed")
        if not curves:
            ax.text(
                0.5,
                0.5,
                "cached features:\nno input to corrupt",
                ha="center",
                transform=ax.transAxes,
                color="grey",
            )
        ax.set(
            title=m,
            xlabel=f"imperfection (level / {LEVELS - 1})",
            ylabel="accuracy",
            ylim=(0, 1.02),
            xlim=(-0.02, 1.02),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    figure.suptitle(
        f"{title}: {result['split']}, {result['examples']} examples, clean accuracy "
        f"{result['clean']:.3f}"
    )
    figure.savefig(path, dpi=110)


def write(result: dict[str, Any], out_dir: Path, title: str) -> tuple[Path, Path]:
    """`robustness.json` and `robustness.png` in `out_dir` (made if needed)."""
    out_dir = output_folder(out_dir, "--out")
    json_path, png_path = out_dir / "robustness.json", out_dir / "robustness.png"
    json_path.write_text(json.dumps({"model": title, **result}, indent=2) + "\n")
    plot(result, png_path, title)
    return json_path, png_path
