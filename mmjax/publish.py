"""Saved models: `save_pretrained` writes a trained model as a self-contained folder,
`load_pretrained` (and `PretrainedModel`) loads one, by path or by the name of a model
published inside the package (`mmjax/published/<name>/`).

A folder holds `card.json` (the experiment config, the dataset description that prepares
inputs and names the classes, the dataset build's shard checksums when known, the metrics, and
the sha256 of every weight file), `README.md` (a model card) and `weights/`, an Orbax
checkpoint of the model's parameters and batch statistics. No optimizer state, and no copy of
frozen catalog encoders (they load from their pinned files), so it stays small.
"""

import datetime
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mmjax.checksum import sha256_file
from mmjax.config import ModelConfig, experiment_from
from mmjax.data import sources
from mmjax.errors import CheckpointError, ConfigError, DataError
from mmjax.models import build_model
from mmjax.models.layers import fill_abstract
from mmjax.parallel import data_mesh
from mmjax.predict import Predictor
from mmjax.pretrained import CATALOG
from mmjax.pretrained.catalog import entry as catalog_entry
from mmjax.pretrained.load import place_encoder
from mmjax.train.checkpoint import tree_handler
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


def save_pretrained(
    source: str | Path | Predictor, path: str | Path, *, card: Mapping[str, Any] | None = None
) -> Path:
    """Save a trained model as a self-contained folder at `path` and return it.

    `source` is a finished run's workdir (its latest checkpoint; its results become the card's
    metrics, and its dataset build's checksums are recorded when the build is here) or a
    Predictor (`load_predictor`, `load_pretrained`). The folder holds `weights/` (an Orbax
    checkpoint of the parameters and batch statistics: no optimizer state, no copy of frozen
    catalog encoders), `card.json` (config, the dataset description that prepares inputs and
    names the classes, metrics, weight-file hashes) and `README.md`, a model card. `card`
    adds or replaces card fields: "description", "intended_use", "limitations", "metrics"
    (merged into the measured ones) or any other.
    """
    target = Path(path).absolute()
    if target.exists():
        raise ConfigError(f"{target} exists; remove it first or save to a new path")
    if isinstance(source, Predictor):
        config, dataset, model, step = source.config, source.dataset, source.model, source.step
        measured = getattr(source, "card", {})
        metrics, build = dict(measured.get("metrics", {})), measured.get("dataset_build")
    else:
        config, dataset, model, step, metrics, build = _finished_run(Path(source))
    exp = experiment_from(config)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    weights = nnx.to_pure_dict(nnx.state(model, _stored(exp.model)))
    with ocp.Checkpointer(tree_handler()) as checkpointer:
        checkpointer.save(staging / "weights", args=ocp.args.PyTreeSave(weights))
    extra = dict(card or {})
    record = {
        "name": target.name,
        "saved": datetime.date.today().isoformat(),
        "mmjax_revision": _git_revision(),  # the run may predate it
        "step": step,
        "parameters": sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
        "config": _portable(config),
        "dataset": dataset,
        "dataset_build": build,
        "metrics": metrics | extra.pop("metrics", {}),
        "catalog_encoders": {
            m: n for m, n in exp.model.pretrained if m in _catalog_encoders(exp.model)
        },
        **extra,
        "files": _file_hashes(staging / "weights"),
    }
    (staging / "card.json").write_text(json.dumps(record, indent=2) + "\n")
    (staging / "README.md").write_text(model_card(record))
    staging.rename(target)
    return target


def _finished_run(
    workdir: Path,
) -> tuple[dict[str, Any], dict[str, Any], nnx.Module, int, dict[str, Any], Any]:
    """(config, dataset description, model, step, metrics, dataset build or None) of a run."""
    results_path = workdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if not results.get("completed"):
        raise CheckpointError(f"{workdir} has not finished training; save a completed run")
    record = read_experiment(workdir)
    exp = experiment_from(record["config"])
    step, graphdef, state = restore_trained(
        workdir, exp, data_mesh(jax.devices()[:1]), model_only=True
    )
    try:
        build = sources.open_source(exp.data).build_checksums()
    except DataError:  # the dataset is not on this machine: the card cannot pin its build
        build = None
    metrics = {k: results[k] for k in ("accuracy", "loss", "macro_f1") if k in results}
    return record["config"], record["dataset"], nnx.merge(graphdef, state), step, metrics, build


def model_card(card: Mapping[str, Any]) -> str:
    """The Markdown model card (README.md) of a saved model's `card.json` fields."""
    model = card["config"]["model"]
    encoders = ", ".join(f"{m}: `{e['name']}`" for m, e in model["encoders"].items())
    classes = card["dataset"].get("class_names") or [str(k) for k in range(model["num_classes"])]
    lines = [
        f"# {card['name']}",
        "",
        card.get("description")
        or f"A multimodal model trained with mmjax: {encoders}, fused by "
        f"`{model['fusion']['name']}`.",
        "",
        "## Intended use",
        "",
        card.get("intended_use") or _default_use(card, classes),
        "",
        "## Data",
        "",
        f"Trained on `{card['dataset'].get('name', '?')}` for {card['step']} steps; classes: "
        f"{', '.join(map(str, classes[:20]))}{' ...' if len(classes) > 20 else ''}.",
        f"Build checksums recorded: {'yes' if card.get('dataset_build') else 'no'}.",
        "",
        "## Metrics",
        "",
    ]
    metrics = card.get("metrics", {})
    accuracy, macro_f1 = metrics.get("accuracy", {}), metrics.get("macro_f1", {})
    if accuracy:
        lines += ["| split | accuracy | macro F1 |", "|---|---|---|"]
        for split, value in accuracy.items():
            f1 = macro_f1.get(split)
            lines.append(f"| {split} | {value:.4f} | {'n/a' if f1 is None else f'{f1:.4f}'} |")
    others = [k for k, v in metrics.items() if v and k not in ("accuracy", "loss", "macro_f1")]
    if others:
        lines += [""] * bool(accuracy) + [
            f"Also in `card.json` under `metrics`: {', '.join(others)}."
        ]
    if not accuracy and not others:
        lines.append("No metrics were recorded.")
    lines += [
        "",
        "## Limitations",
        "",
        card.get("limitations")
        or "Measured only on the splits above; inputs unlike the training data (other "
        "recording conditions, image sources, languages) may score far lower. Check it on "
        "your own data (`mmjax robustness`, `evaluate`) before relying on it.",
        "",
        "## Use",
        "",
        "```python",
        "import mmjax",
        "",
        f'model = mmjax.load_pretrained("{card["name"]}")  # or the folder\'s path',
        "model.predict(...)  # class names; model.predict_proba(...), model.evaluate(split)",
        "```",
        "",
        f"{card['parameters']:,} parameters; `card.json` holds the config and the sha256 of "
        "every weight file.",
    ]
    return "\n".join(lines) + "\n"


def _default_use(card: Mapping[str, Any], classes: list[str]) -> str:
    model, data = card["config"]["model"], card["dataset"].get("name", "its dataset")
    inputs = " + ".join(model["encoders"])
    if model.get("classification_weight", 1.0) == 0:
        return (
            f"Embedding {inputs} inputs prepared like its training data ({data}) into one "
            "space, for retrieval and zero-shot matching; it has no trained classifier."
        )
    return (
        f"Classifying {inputs} inputs prepared like its training data ({data}) into its "
        f"{len(classes)} classes; research and comparison of fusion methods."
    )


class PretrainedModel(Predictor):
    """A saved model (`save_pretrained`): `predict`, `predict_proba`, `evaluate(split)` like a
    Predictor, the underlying `model` (an `nnx.Module`) and its `card`. Its weight files must
    match the card's hashes."""

    def __init__(self, folder: str | Path):
        folder = Path(folder).absolute()
        if not (folder / "card.json").is_file():
            raise ConfigError(f"{folder} is not a saved mmjax model (no card.json)")
        self.card = json.loads((folder / "card.json").read_text())
        found = _file_hashes(folder / "weights")
        if found != self.card["files"]:
            changed = sorted(set(found.items()) ^ set(self.card["files"].items()))
            raise CheckpointError(
                f"{folder}/weights differs from its card ({[f for f, _ in changed][:4]}); "
                "save or install it again"
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
        super().__init__(self.card["config"], self.card["dataset"], model, step=self.card["step"])
        self.name = self.card["name"]
        self.folder = folder

    def _require_classifier(self) -> None:
        if self.experiment.model.classification_weight == 0:
            raise ConfigError(
                f"{self.name} trained no classifier (model.classification_weight is 0); use "
                "its embeddings: mmjax.train.retrieval.model_metrics(model.model, ...) or "
                "model.model.fusion.embed(...)"
            )

    def predict_proba(self, **inputs: Any) -> np.ndarray:
        self._require_classifier()
        return super().predict_proba(**inputs)

    def evaluate(self, split: str, *, data_root: str = "") -> dict[str, Any]:
        """Predictor.evaluate, plus `same_build`: whether the local build's shards of `split`
        have the card's checksums (then the accuracy equals the card's)."""
        self._require_classifier()
        result = super().evaluate(split, data_root=data_root)
        config = json.loads(json.dumps(self.card["config"]))
        config["data"]["root"] = data_root
        shards = sources.open_source(experiment_from(config).data).build_checksums()["shards"]
        recorded = (self.card.get("dataset_build") or {}).get("shards", {})
        return result | {"same_build": shards.get(split) == recorded.get(split)}


def load_pretrained(name_or_path: str | Path) -> PretrainedModel:
    """A saved model: the name of one published with mmjax (`published_names()`) or the path
    of a folder `save_pretrained` wrote. Catalog encoders load with `mmjax.load_encoder`."""
    if str(name_or_path) in published_names():
        return PretrainedModel(PUBLISHED_DIR / str(name_or_path))
    if (Path(name_or_path) / "card.json").is_file():
        return PretrainedModel(name_or_path)
    if str(name_or_path) in CATALOG:
        raise ConfigError(
            f"{name_or_path!r} is a catalog encoder, not a trained model: load it with "
            f"mmjax.load_encoder({str(name_or_path)!r})"
        )
    raise ConfigError(
        f"no saved model {str(name_or_path)!r}: neither a published name "
        f"({', '.join(published_names()) or 'none'}) nor a folder with a card.json"
    )
