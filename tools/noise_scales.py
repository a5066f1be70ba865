"""AV-Digits accuracy at noise scales from clean inputs to the dataset's default noise, with both
modalities and with each one alone: does the fused model lose to its best single input?
Shared by tools/never_loses.py, tools/compare_fusions.py and tools/publish.py."""

import math
from pathlib import Path

import jax

from mmjax.config import experiment_from
from mmjax.experiments import AVDIGITS_AUDIO_SNR_DB, AVDIGITS_IMAGE_NOISE
from mmjax.parallel import data_mesh
from mmjax.train.loop import evaluate
from mmjax.train.step import make_eval_step
from mmjax.train.workdir import read_experiment, restore_trained

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
SPLITS = ("test", "test_human")
INPUTS = {"both": (), "image only": ("audio",), "audio only": ("image",)}


def noise_at(scale: float) -> dict[str, float]:
    """The data settings whose noise is `scale` times the default's amplitude."""
    snr = 100.0 if scale == 0 else AVDIGITS_AUDIO_SNR_DB - 20 * math.log10(scale)
    return {"image_noise": scale * AVDIGITS_IMAGE_NOISE, "audio_snr_db": min(snr, 100.0)}


def measure(run_dir: Path, data_dir: str, scales: tuple[float, ...] = SCALES) -> dict:
    """{split: {input: [accuracy at each scale]}} of the trained run in `run_dir`."""
    config = read_experiment(run_dir)["config"]
    config["data"]["root"] = data_dir
    mesh = data_mesh()
    _, graphdef, state = restore_trained(run_dir, experiment_from(config), mesh)
    eval_step = make_eval_step(graphdef, jax.tree.map(lambda x: x.sharding, state), mesh)
    out: dict = {split: {name: [] for name in INPUTS} for split in SPLITS}
    for scale in scales:
        exp = experiment_from({**config, "data": {**config["data"], **noise_at(scale)}})
        for split in SPLITS:
            for name, missing in INPUTS.items():
                result = evaluate(
                    graphdef, state, exp, split, mesh, missing=missing, eval_step=eval_step
                )
                out[split][name].append(result["accuracy"])
    return out


def clean_margins(run_dir: Path, data_dir: str) -> dict[str, float]:
    """Per split, on clean inputs (no added noise): accuracy with both modalities
    (`clean_<split>`) and its margin over the better single input (`clean_margin_<split>`;
    below 0 the fusion loses to one of its own inputs)."""
    clean = measure(run_dir, data_dir, scales=(0.0,))
    out = {}
    for split, accuracy in clean.items():
        out[f"clean_{split}"] = accuracy["both"][0]
        best = max(accuracy["image only"][0], accuracy["audio only"][0])
        out[f"clean_margin_{split}"] = accuracy["both"][0] - best
    return out
