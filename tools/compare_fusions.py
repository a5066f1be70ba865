"""Train every registered fusion head on AV-Digits with several seeds; write a Markdown table.

Each head sits on the same encoders (`avdigits_late`'s small CNN and CNN-LSTM) with its
default Config, the dataset's default noise and the same optimiser and step budget, so the
fusion is the only difference. Per head it reports accuracy (mean +- std over seeds) on
held-out TTS voices and on human recordings, accuracy on held-out voices with the audio
or the image masked out, parameter counts, forward FLOPs per example (XLA's count) and the
median train-step time on this machine.

    python tools/compare_fusions.py [--steps 1000] [--seeds 0 1 2] [--fusions a b ...]

A finished (head, seed) run leaves `compare_row.json` in its run directory and is not
repeated, so an interrupted comparison continues where it stopped when run again with the
same --workdir and --steps.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import mmjax
from mmjax.config import experiment_from
from mmjax.experiments import avdigits_config
from mmjax.parallel import data_mesh, put_batch
from mmjax.train.loop import evaluate_workdir
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import make_train_step
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
    """Parameter counts, forward FLOPs per example and median train-step seconds."""
    exp = experiment_from(config)
    mesh = data_mesh()
    graphdef, state = init_state(exp, mesh)
    model, _ = nnx.merge(graphdef, state)
    count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    batch = put_batch(_random_batch(exp.train.batch_size), mesh)
    model_graph, params = nnx.split(model)
    forward = jax.jit(lambda p, b: nnx.merge(model_graph, p)(b, train=False))
    analysis = forward.lower(params, batch).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(TIMED_STEPS):
        started = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    return {
        "params": count(model),
        "fusion_params": count(model.fusion),
        "forward_flops": float(analysis.get("flops", float("nan"))) / exp.train.batch_size,
        "step_ms": 1000 * statistics.median(times),
    }


def run_head(fusion: str, seeds: list[int], steps: int, data_dir: str, workdir: Path) -> dict:
    runs = []
    for seed in seeds:
        run_dir = workdir / fusion / f"seed{seed}"
        done = run_dir / "compare_row.json"
        if done.exists():  # finished by an earlier, interrupted invocation
            saved = read_experiment(run_dir)["config"]
            if saved["train"]["steps"] != steps:
                raise SystemExit(
                    f"{run_dir} ran {saved['train']['steps']} steps, not {steps}; "
                    "use another --workdir"
                )
            runs.append(json.loads(done.read_text()))
            continue
        results = mmjax.train(experiment(fusion, seed, steps, data_dir), run_dir, progress=False)
        row = dict(results["accuracy"])
        for removed in ("audio", "image"):
            only = evaluate_workdir(run_dir, ("test",), data_root=data_dir, missing=(removed,))
            row[f"test_without_{removed}"] = only["test"]["accuracy"]
        done.write_text(json.dumps(row))
        runs.append(row)
        print(f"{fusion} seed {seed}: {row}", flush=True)
    summary = {key: [r[key] for r in runs] for key in runs[0]}
    return {"accuracy": summary, **cost(experiment(fusion, seeds[0], steps, data_dir))}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(rows: dict[str, dict], steps: int, seeds: list[int]) -> str:
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
        "not with other hardware).",
        "",
        "| fusion | held-out TTS voices | human recordings | without audio | without image "
        "| params (head) | forward MFLOPs | train step ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda f: -statistics.mean(rows[f]["accuracy"]["test"]))
    for fusion in order:
        r, acc = rows[fusion], rows[fusion]["accuracy"]
        head.append(
            f"| `{fusion}` | {_mean_std(acc['test'])} | {_mean_std(acc['test_human'])} "
            f"| {_mean_std(acc['test_without_audio'])} | {_mean_std(acc['test_without_image'])} "
            f"| {r['params'] / 1e3:.0f}k ({r['fusion_params'] / 1e3:.0f}k) "
            f"| {r['forward_flops'] / 1e6:.1f} | {r['step_ms']:.1f} |"
        )
    return "\n".join(head) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fusions", nargs="+", default=mmjax.FUSIONS.names())
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--workdir", default="runs/compare_fusions")
    parser.add_argument("--out", default="docs/results/avdigits.md")
    args = parser.parse_args()
    data_dir = str(mmjax.data.sources.data_root(args.data_dir))
    rows = {}
    for fusion in args.fusions:
        rows[fusion] = run_head(fusion, args.seeds, args.steps, data_dir, Path(args.workdir))
        Path(args.workdir, "rows.json").write_text(json.dumps(rows, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown(rows, args.steps, args.seeds))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
