"""Train every registered fusion head on AV-Digits with several seeds; write a Markdown table.

Each head sits on the same encoders (`avdigits_late`'s small CNN and CNN-LSTM) with its
default Config, the dataset's default noise and the same optimiser and step budget, so the
fusion is the only difference. Per head it reports accuracy (mean +- std over seeds) on
held-out TTS voices and on human recordings, accuracy on held-out voices with the audio
or the image masked out, MultiBench's robustness summaries of `mmjax robustness` curves,
parameter counts, forward FLOPs per example (XLA's count) and the
median train-step time on this machine, and, on clean inputs (no added noise), the accuracy with
both modalities and its margin over the better modality alone.

    python tools/compare_fusions.py [--steps 1000] [--seeds 0 1 2] [--fusions a b ...]

A head's seeds train together as one `mmjax sweep` (WORKDIR/<fusion>/seed<N> are its
copies, each equal to the single run of that seed). A finished (head, seed) row leaves
`compare_row.json` in the copy's directory and is not repeated, and an interrupted sweep
resumes from its checkpoint, so an interrupted comparison continues where it stopped when
run again with the same --workdir and --steps.
"""

import argparse
import json
import statistics
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure
from noise_scales import clean_margins
from result_tables import mean_std

import mmjax
from mmjax import robustness
from mmjax.experiments import avdigits_config
from mmjax.perf import model_cost
from mmjax.train.loop import evaluate_workdir
from mmjax.train.workdir import read_experiment

TIMED_STEPS = 10


def experiment(fusion: str, seed: int, steps: int, data_dir: str) -> dict:
    config = avdigits_config("avdigits_late").to_dict()
    config["model"]["fusion"] = {"name": fusion}
    config["train"].update(seed=seed, steps=steps, eval_splits=("test", "test_human"))
    config["data"]["root"] = data_dir
    return json.loads(json.dumps(config))


def _random_batch(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((size, 8, 8, 1), np.float32),
        "audio": rng.standard_normal((size, 8000)).astype(np.float32),
        "image_mask": np.ones(size, bool),
        "audio_mask": np.ones(size, bool),
        "label": rng.integers(0, 10, size).astype(np.int32),
    }


def cost(config: dict) -> dict[str, float]:
    """Parameter counts, forward FLOPs per example and median train-step milliseconds."""
    batch = _random_batch(config["train"]["batch_size"])
    measured = model_cost(config, batch, iters=TIMED_STEPS)
    return measured | {"step_ms": 1000 * measured.pop("step_s")}


def run_head(fusion: str, seeds: list[int], steps: int, data_dir: str, workdir: Path) -> dict:
    """The head's seeds train as one `mmjax sweep` in WORKDIR/<fusion> (copies seed0, seed1,
    ...); each copy is then evaluated without each modality, under the robustness curves and
    on clean inputs."""
    head_dir = workdir / fusion
    done = {seed: head_dir / f"seed{seed}" / "compare_row.json" for seed in seeds}
    for path in done.values():
        if path.exists():  # finished by an earlier, interrupted invocation
            saved = read_experiment(path.parent)["config"]
            if saved["train"]["steps"] != steps:
                raise SystemExit(
                    f"{path.parent} ran {saved['train']['steps']} steps, not {steps}; "
                    "use another --workdir"
                )
    if not all(path.exists() for path in done.values()):
        config = experiment(fusion, seeds[0], steps, data_dir)
        mmjax.sweep(config, head_dir, seeds=seeds, progress=False)
    runs = []
    for seed in seeds:
        run_dir = done[seed].parent
        row = json.loads(done[seed].read_text()) if done[seed].exists() else {}
        if not row:
            row = dict(json.loads((run_dir / "results.json").read_text())["accuracy"])
            for removed in ("audio", "image"):
                only = evaluate_workdir(run_dir, ("test",), data_root=data_dir, missing=(removed,))
                row[f"test_without_{removed}"] = only["test"]["accuracy"]
            curves = robustness.measure(mmjax.load_predictor(run_dir), "test", data_root=data_dir)
            robustness.write(curves, run_dir / "robustness", f"{fusion} seed {seed}")
            row["relative_robustness"] = curves["summary"]["relative_robustness"]
        if "clean_margin_test_human" not in row:  # rows written before this column existed
            row |= clean_margins(run_dir, data_dir)
        done[seed].write_text(json.dumps(row))
        runs.append(row)
        print(f"{fusion} seed {seed}: {row}", flush=True)
    summary = {key: [r[key] for r in runs] for key in runs[0]}
    return {"accuracy": summary, **cost(experiment(fusion, seeds[0], steps, data_dir))}


def effective_robustness(workdir: Path, fusion: str, seeds: list[int]) -> list[float] | None:
    """Per seed, the head's mean effective robustness over its curves against late_concat's
    curves of the same seed (MultiBench's reference); None without late_concat's runs."""
    values = []
    for seed in seeds:
        paths = [
            workdir / f / f"seed{seed}" / "robustness" / "robustness.json"
            for f in (fusion, "late_concat")
        ]
        if not all(p.is_file() for p in paths):
            return None
        result, reference = (json.loads(p.read_text()) for p in paths)
        values.append(robustness.against(result, reference)["summary"]["effective_robustness"])
    return values


def markdown(rows: dict[str, dict], steps: int, seeds: list[int], workdir: Path) -> str:
    head = [
        "# Fusion heads on AV-Digits",
        "",
        f"Generated by `tools/compare_fusions.py --steps {steps} --seeds "
        f"{' '.join(map(str, seeds))}` on {jax.devices()[0].device_kind} "
        f"({jax.device_count()} device(s)). Every head uses the same encoders (small CNN on the "
        "8x8 digit, CNN-LSTM on the spoken digit), its default Config, AdamW, batch 64 and "
        "the dataset's default noise. Accuracy is mean ± std over the seeds (one seed: its "
        "value); the two "
        "'without' columns evaluate held-out voices with one modality masked out for every "
        "sample. FLOPs are XLA's count for one example's forward pass; step time is the "
        "median of 10 train steps on this machine (2 CPU cores: compare heads with each other, "
        "not with other hardware). Robustness is MultiBench's (Liang et al. 2021), from `mmjax "
        "robustness` on held-out voices, averaged over its 5 curves (audio: white noise, time "
        "mask; image: Gaussian noise, blur, occlusion; 10 levels each): relative = the area "
        "under the accuracy curve, effective = the mean gain over late_concat's curve shifted "
        "to the same clean accuracy. The 'without' columns show the imbalance: how much of the "
        "accuracy each modality carries alone. The 'clean' columns evaluate without the "
        "dataset's added noise: accuracy with both inputs, then its margin over the better "
        "single input of the same model (negative: the fusion loses to one of its inputs; "
        "docs/results/never_loses.md). A head that fails with either input alone (near "
        "chance in the 'without' columns) wins that margin trivially: compare its clean "
        "accuracy with the other heads' instead.",
        "",
        "| fusion | held-out TTS voices | human recordings | without audio | without image "
        "| clean held-out voices: both, margin | clean human: both, margin "
        "| relative robustness | effective robustness | params (head) | forward MFLOPs "
        "| train step ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda f: -statistics.mean(rows[f]["accuracy"]["test"]))
    for fusion in order:
        r, acc = rows[fusion], rows[fusion]["accuracy"]
        effective = effective_robustness(workdir, fusion, seeds)
        head.append(
            f"| `{fusion}` | {mean_std(acc['test'])} | {mean_std(acc['test_human'])} "
            f"| {mean_std(acc['test_without_audio'])} | {mean_std(acc['test_without_image'])} "
            f"| {mean_std(acc['clean_test'])}, {mean_std(acc['clean_margin_test'])} "
            f"| {mean_std(acc['clean_test_human'])}, {mean_std(acc['clean_margin_test_human'])} "
            f"| {mean_std(acc['relative_robustness'])} "
            f"| {mean_std(effective) if effective else 'n/a'} "
            f"| {r['params'] / 1e3:.0f}k ({r['fusion_params'] / 1e3:.0f}k) "
            f"| {r['forward_flops'] / 1e6:.1f} | {r['step_ms']:.1f} |"
        )
    return "\n".join(head) + "\n"


def chart(rows: dict[str, dict], path: Path) -> None:
    """The table's accuracy columns as bars (mean, with the std over seeds): held-out voices
    and human recordings with both inputs, and the clean margin over the better single input."""
    order = sorted(rows, key=lambda f: statistics.mean(rows[f]["accuracy"]["test"]))
    panels = (
        ("accuracy at the default noise", ("test", "test_human")),
        (
            "clean: margin over the better single input",
            ("clean_margin_test", "clean_margin_test_human"),
        ),
    )
    figure = Figure(figsize=(12, 0.32 * len(order) + 1.6), layout="constrained")
    for ax, (title, columns) in zip(figure.subplots(1, 2, sharey=True), panels, strict=True):
        y = np.arange(len(order))
        for k, column in enumerate(columns):
            values = [rows[f]["accuracy"][column] for f in order]
            ax.barh(
                y + (k - 0.5) * 0.4,
                [statistics.mean(v) for v in values],
                0.4,
                xerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values],
                label=column.replace("clean_margin_", ""),
            )
        ax.set_yticks(y, order)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set(title=title)
        ax.grid(axis="x", alpha=0.3)
    figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2)
    figure.savefig(path, dpi=110)


def main() -> None:
    mmjax.log_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fusions", nargs="+", default=mmjax.FUSIONS.names())
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--workdir", default="runs/compare_fusions")
    parser.add_argument("--out", default="docs/results/avdigits.md")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="write the table and chart from WORKDIR/rows.json (an earlier run's measurements)",
    )
    args = parser.parse_args()
    data_dir = str(mmjax.data.sources.data_root(args.data_dir))
    rows_file = Path(args.workdir, "rows.json")
    if args.render_only:
        rows = json.loads(rows_file.read_text())
    else:
        rows = {}
        for fusion in args.fusions:
            rows[fusion] = run_head(fusion, args.seeds, args.steps, data_dir, Path(args.workdir))
            rows_file.write_text(json.dumps(rows, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure = Path(args.out).with_suffix(".png")
    chart(rows, figure)
    table = markdown(rows, args.steps, args.seeds, Path(args.workdir))
    Path(args.out).write_text(table + f"\n![the table as bars]({figure.name})\n")
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
