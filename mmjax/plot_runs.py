"""`mmjax plot`: PNG charts of one or more trained runs (workdirs)."""

import json
import logging
from pathlib import Path

from mmjax import plots
from mmjax.data.source import class_names
from mmjax.errors import MmjaxError
from mmjax.folders import output_folder
from mmjax.predict import load_predictor
from mmjax.train.workdir import read_experiment

log = logging.getLogger(__name__)


def plot_runs(
    workdirs: list[str | Path], out: str | Path, *, split: str = "", data_root: str = ""
) -> list[Path]:
    """Write into `out`: `curves.png` (every logged metric against the step, a line per run),
    `confusion-<run>.png` (each finished run's confusion matrix on `split`, default its first
    evaluated split) and `modalities.png` (each finished run's accuracy on that split with all
    modalities and with each one removed: evaluated now). Returns the paths written."""
    runs = {_name(Path(w), workdirs): Path(w) for w in workdirs}
    rows = {name: _rows(workdir) for name, workdir in runs.items()}
    finished = {}  # name: (results, the split its charts show), all checked before drawing
    for name, workdir in runs.items():
        results_file = workdir / "results.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        if not results.get("confusion"):
            log.info(
                f"{workdir}: no confusion matrix in results.json (unfinished, or trained by an "
                "older mmjax): only its curves are plotted"
            )
            continue
        chosen = split or next(iter(results["confusion"]))
        if chosen not in results["confusion"]:
            raise MmjaxError(
                f"--split {chosen}: {workdir} was evaluated on {', '.join(results['confusion'])}"
            )
        finished[name] = results, chosen
    out = output_folder(out, "--out")
    written = [plots.save(plots.training_figure(rows), out / "curves.png")]
    accuracy = {}
    for name, (results, chosen) in finished.items():
        workdir = runs[name]
        names = class_names(read_experiment(workdir)["dataset"])
        title = f"{name}, {chosen}: accuracy {results['accuracy'][chosen]:.3f}"
        figure = plots.confusion_figure(results["confusion"][chosen], names, title)
        written.append(plots.save(figure, out / f"confusion-{name}.png"))
        accuracy[name] = _per_modality(workdir, chosen, data_root)
    if accuracy:
        shown = {chosen for _, chosen in finished.values()}
        label = shown.pop() if len(shown) == 1 else "each run's first evaluated split"
        written.append(plots.save(plots.modality_figure(accuracy, label), out / "modalities.png"))
    return written


def _name(workdir: Path, workdirs: list[str | Path]) -> str:
    """The run's folder name, or its whole path where two runs share a folder name."""
    names = [Path(w).name for w in workdirs]
    unique = names.count(workdir.name) == 1
    return workdir.name if unique else str(workdir).strip("/").replace("/", "_")


def _rows(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        raise MmjaxError(f"{workdir} has no metrics.jsonl: not an mmjax run, or not started")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _per_modality(workdir: Path, split: str, data_root: str) -> dict[str, float]:
    """Accuracy with all modalities and without each one: one restore, one compiled step."""
    predictor = load_predictor(workdir)
    accuracy = {"all": predictor.evaluate(split, data_root=data_root)["accuracy"]}
    if len(predictor.modalities) > 1:
        for m in predictor.modalities:
            result = predictor.evaluate(split, data_root=data_root, missing=(m,))
            accuracy[f"without {m}"] = result["accuracy"]
    return accuracy
