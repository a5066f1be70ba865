"""Published fusion models: trained weights + a JSON card, shipped inside the package.

A published model lives in `mmjax/published/<name>/`: `card.json` (the experiment config,
the dataset build's shard checksums, the metrics measured at publication, and the sha256 of
every weight file) and `weights/`, an Orbax checkpoint of the model's parameters and batch
statistics. No optimizer state, and no copy of frozen catalog encoders (they load from their
pinned files), so it stays small.
"""

import datetime
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mmjax.checksum import sha256_file
from mmjax.config import ModelConfig, experiment_from
from mmjax.data import sources
from mmjax.errors import CheckpointError, ConfigError
from mmjax.models import build_model
from mmjax.models.layers import fill_abstract
from mmjax.parallel import data_mesh
from mmjax.predict import Predictor
from mmjax.pretrained.catalog import entry as catalog_entry
from mmjax.pretrained.load import place_encoder
from mmjax.train.loop import evaluate
from mmjax.train.optim import make_optimizer
from mmjax.train.state import state_shardings
from mmjax.train.workdir import read_experiment, restore_trained

PUBLISHED_DIR = Path(__file__).parent / "published"
KEPT = nnx.Not(nnx.RngState)  # parameters, batch statistics, frozen tables


def _catalog_encoders(cfg: ModelConfig) -> set[str]:
    """Modalities whose encoder is a frozen catalog encoder: its weights are the catalog
    file's (sha256-pinned), so a published model names it instead of storing a copy."""
    return {m for m, _ in cfg.pretrained if m in cfg.frozen}


def _stored(cfg: ModelConfig) -> nnx.filterlib.Filter:
    """What a published model stores: every variable but RNG state, minus catalog encoders."""
    skipped = _catalog_encoders(cfg)

    def in_catalog_encoder(path: tuple, _: Any) -> bool:
        return len(path) > 1 and path[0] == "encoders" and path[1] in skipped

    return nnx.All(KEPT, nnx.Not(in_catalog_encoder))


def published_names() -> list[str]:
    return sorted(p.parent.name for p in PUBLISHED_DIR.glob("*/card.json"))


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=PUBLISHED_DIR.parent
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _portable(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config without where its data lived on the publishing machine. Trained
    (unfrozen) word-vector tables only started from their `embeddings` file, and the weights
    hold what they became, so those files are not needed to load the model."""
    config = json.loads(json.dumps(config))
    config["data"]["root"] = ""
    config["data"]["features"] = ""  # a cached-features store is evaluated on its dataset
    for encoder in config["model"]["encoders"].values():
        if encoder.get("embeddings") and not encoder.get("freeze_embeddings"):
            encoder["embeddings"] = encoder["vocab"] = ""
    return config


def publish(
    workdir: str | Path,
    name: str,
    *,
    out_dir: Path = PUBLISHED_DIR,
    extra_metrics: dict[str, Any] | None = None,
) -> Path:
    """Publish the latest checkpoint of the finished run in `workdir` as `out_dir/name`;
    `extra_metrics` (e.g. retrieval numbers) join the card's metrics."""
    workdir = Path(workdir)
    target = Path(out_dir).absolute() / name
    if target.exists():
        raise ConfigError(f"{target} exists; remove it first to publish {name!r} again")
    results_path = workdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if not results.get("completed"):
        raise CheckpointError(f"{workdir} has not finished training; publish a completed run")
    record = read_experiment(workdir)
    exp = experiment_from(record["config"])
    step, graphdef, state = restore_trained(workdir, exp, data_mesh(jax.devices()[:1]))
    model, _ = nnx.merge(graphdef, state)
    source = sources.open_source(exp.data)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / "weights", nnx.to_pure_dict(nnx.state(model, _stored(exp.model))))
    checkpointer.wait_until_finished()
    card = {
        "name": name,
        "published": datetime.date.today().isoformat(),
        "publishing_revision": _git_revision(),  # the run may predate it
        "step": step,
        "parameters": sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
        "config": _portable(record["config"]),
        "dataset": record["dataset"],
        "dataset_build": source.build_checksums(),
        "metrics": {"accuracy": results["accuracy"], "loss": results["loss"]}
        | (extra_metrics or {}),
        "catalog_encoders": {
            m: n for m, n in exp.model.pretrained if m in _catalog_encoders(exp.model)
        },
        "files": _file_hashes(staging / "weights"),
    }
    (staging / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    staging.rename(target)
    return target


class PublishedModel(Predictor):
    """A published model: `predict(...)` like a Predictor, its `card`, and `evaluate(split)`
    on the local dataset build (equal to the card's accuracy when the build's checksums are)."""

    @staticmethod
    def folder_of(name: str, folder: Path = PUBLISHED_DIR) -> Path:
        return Path(folder).absolute() / name

    def __init__(self, name: str, folder: Path = PUBLISHED_DIR):
        folder = self.folder_of(name, folder)
        if not (folder / "card.json").is_file():
            raise ConfigError(
                f"no published model {name!r}; published: {', '.join(published_names()) or 'none'}"
            )
        self.card = json.loads((folder / "card.json").read_text())
        found = _file_hashes(folder / "weights")
        if found != self.card["files"]:
            changed = sorted(set(found.items()) ^ set(self.card["files"].items()))
            raise CheckpointError(
                f"{folder}/weights differs from its card ({[f for f, _ in changed][:4]}); "
                "reinstall mmjax"
            )
        experiment = experiment_from(self.card["config"])
        # Built abstractly: the weights come from files, so only what they leave out (RNG
        # state) is initialised, at the end.
        factory = lambda: build_model(experiment.model, rngs=nnx.Rngs(0))
        model = nnx.eval_shape(factory)
        for m in _catalog_encoders(experiment.model):  # not stored: load their pinned files
            place_encoder(model.encoders[m], catalog_entry(dict(experiment.model.pretrained)[m]))
        state = nnx.state(model, _stored(experiment.model))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
            nnx.to_pure_dict(state),
        )
        nnx.replace_by_pure_dict(
            state, ocp.StandardCheckpointer().restore(folder / "weights", target)
        )
        nnx.update(model, state)
        fill_abstract(model, factory)
        super().__init__(experiment, self.card["dataset"], model, step=self.card["step"])
        self.name = name
        self.model = model

    def _require_classifier(self) -> None:
        if self.experiment.model.classification_weight == 0:
            raise ConfigError(
                f"{self.name} trained no classifier (model.classification_weight is 0); use "
                "its embeddings: mmjax.train.retrieval.model_metrics(published.model, ...) or "
                "published.model.fusion.embed(...)"
            )

    def predict_proba(self, **inputs: Any) -> np.ndarray:
        self._require_classifier()
        return super().predict_proba(**inputs)

    def evaluate(self, split: str, *, data_root: str = "") -> dict[str, Any]:
        """Accuracy and loss on `split` of the local build, with the card's data settings;
        `same_build` says whether its shards have the card's checksums."""
        self._require_classifier()
        config = json.loads(json.dumps(self.card["config"]))
        config["data"]["root"] = data_root
        exp = experiment_from(config)
        source = sources.open_source(exp.data)
        mesh = data_mesh(jax.devices()[:1])
        # The train state's layout that `evaluate` takes, around this model: an optimizer built
        # eagerly costs far less than compiling a fresh model's initialisation (`init_state`).
        optimizer = nnx.Optimizer(
            self.model, make_optimizer(exp.optim, exp.train.steps), wrt=self.model.trainable()
        )
        graphdef, state = nnx.split((self.model, optimizer))
        state = jax.device_put(state, state_shardings(state, mesh, exp.parallel))
        result = evaluate(graphdef, state, exp, split, mesh)
        same = source.build_checksums()["shards"].get(split) == (
            self.card["dataset_build"]["shards"].get(split)
        )
        return result | {"same_build": same}
