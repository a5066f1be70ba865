"""Every product-clips model, several seeds each -> docs/results/product_clips.md.

The models are `configs/clips_seed.py` with one change each: the fusion head (late
concatenation, the CNN+RNN fusion network, adversarial alignment, MBT, Perceiver, tensor
fusion), the frame encoder (frozen ImageNet EfficientNet-Lite0 features cached once with
`mmjax features extract`), or the modalities (title, frames or voice-over alone). Per model
it reports test accuracy (mean ± std over seeds), test accuracy with each modality removed,
parameters, XLA's forward FLOPs per example and the median train-step time, and the wall
time of the whole table.

    python tools/product_clips_results.py [--steps 300] [--seeds 0 1 2] [--models a b ...]
        [--frames small_cnn] [--data-dir D] [--workdir runs/product_clips]

A finished (model, seed) run leaves `row.json` in its run directory and is not repeated, so
an interrupted table continues where it stopped when run again with the same --workdir; the
table holds every finished run of the workdir (`--models` with no names only rewrites it).
XLA programs are cached on disk in the workdir: seeds after the first compile nothing new.
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from result_tables import mean_std

import mmjax
from mmjax.config import experiment_from
from mmjax.data.builders import product_clips
from mmjax.data.sources import data_root, open_source
from mmjax.features import extract
from mmjax.parallel import data_mesh
from mmjax.perf import model_cost
from mmjax.train.loop import evaluate
from mmjax.train.workdir import read_experiment, restore_trained

ONLY = {
    "title_only": "text",
    "frames_only": "video",
    "frames_only_pretrained": "video",
    "voice_only": "audio",
}
CACHED_FRAMES = {  # frozen EfficientNet-Lite0 frames, cached once
    "model.encoders.video.frame_encoder": "efficientnet_lite0",
    "model.encoders.video.temporal": "mean",
    "model.pretrained.video": "efficientnet-lite0",
    "model.frozen": ("video",),
}
MODELS = {
    "late_concat": {},
    "cnn_rnn": {"model.fusion": "cnn_rnn"},
    "late_concat_adversarial": {"model.adversarial_weight": 0.1},
    "mbt": {"model.fusion": "mbt"},
    "perceiver": {"model.fusion": "perceiver"},
    "tensor_fusion": {"model.fusion": "tensor_fusion"},
}
HEADS = tuple(MODELS)
MODELS |= {f"{head}_pretrained_frames": MODELS[head] | CACHED_FRAMES for head in HEADS}
MODELS |= {name: CACHED_FRAMES if name.endswith("_pretrained") else {} for name in ONLY}
FRAME_ENCODERS = ("resnet50", "resnet18", "small_cnn")


def experiment(name: str, seed: int, args: argparse.Namespace, features: str = "") -> dict:
    """The config of model `name`: the seed config with the table's frame encoder, the model's
    changes, `args.steps` steps, this seed, evaluated on test."""
    cfg = mmjax.load_config_file("configs/clips_seed.py")
    changes = {"model.encoders.video.frame_encoder": args.frames} | MODELS[name]
    changes |= {"train.seed": seed, "train.steps": args.steps, "train.eval_splits": ("test",)}
    changes |= {"data.root": args.data_dir, "data.features": features}
    built = Path(args.data_dir) / product_clips.NAME
    changes |= {
        "model.encoders.text.embeddings": str(built / product_clips.WORD_VECTORS),
        "model.encoders.text.vocab": str(built / "vocab.txt"),
    }
    changes |= {"train.checkpoint_every": args.steps, "optim.warmup_steps": args.steps // 10}
    for key, value in changes.items():
        mmjax.set_value(cfg, key, value)
    config = json.loads(json.dumps(cfg.to_dict()))
    if name in ONLY:
        kept = ONLY[name]
        model = config["model"]
        model["encoders"] = {kept: model["encoders"][kept]}
        model["pretrained"] = {kept: model["pretrained"][kept]}
    return config


def cached_frames(args: argparse.Namespace) -> str:
    """The frozen EfficientNet-Lite0 frame features, extracted once (with their seconds)."""
    out = Path(args.workdir) / "efficientnet_frames"
    if not (out / "info.json").is_file():
        info = extract(experiment("late_concat_pretrained_frames", 0, args), out)
        print(f"cached frame features in {info['extract_seconds']:.1f} s", flush=True)
        (out.parent / "extract_seconds.json").write_text(json.dumps(info["extract_seconds"]))
    return str(out)


def run(name: str, seed: int, args: argparse.Namespace) -> dict:
    """Trains one (model, seed) and evaluates it on test whole and with each modality
    removed; returns its row (also saved as row.json)."""
    run_dir = Path(args.workdir) / name / f"seed{seed}"
    done = run_dir / "row.json"
    if done.exists():
        if read_experiment(run_dir)["config"]["train"]["steps"] != args.steps:
            raise SystemExit(f"{run_dir} ran another --steps; use another --workdir")
        return json.loads(done.read_text())
    features = cached_frames(args) if MODELS[name].get("model.frozen") else ""
    config = experiment(name, seed, args, features)
    started = time.perf_counter()
    results = mmjax.train(config, run_dir, progress=False)
    result = {"test": results["accuracy"]["test"]}
    exp = experiment_from(config)
    mesh = data_mesh()
    _, graphdef, state = restore_trained(run_dir, exp, mesh)
    for m in exp.model.modalities if len(exp.model.modalities) > 1 else ():
        without = evaluate(graphdef, state, exp, "test", mesh, missing=(m,))
        result[f"without_{m}"] = without["accuracy"]
    result["seconds"] = time.perf_counter() - started  # training and evaluation
    done.write_text(json.dumps(result))
    print(f"{name} seed {seed}: {result}", flush=True)
    return result


def finished(name: str, args: argparse.Namespace) -> list[Path]:
    """The row.json of every finished seed of model `name` in the workdir."""
    return sorted((Path(args.workdir) / name).glob("seed*/row.json"))


def row(name: str, args: argparse.Namespace) -> dict:
    """Model `name`'s table row from all its finished seeds, with its cost (measured once)."""
    runs = [json.loads(p.read_text()) for p in finished(name, args)]
    costs_path = Path(args.workdir) / name / "cost.json"
    if not costs_path.is_file():
        costs_path.write_text(json.dumps(cost(name, args)))
    accuracy = {key: [r[key] for r in runs] for key in runs[0] if key != "seconds"}
    seconds = sum(r["seconds"] for r in runs)
    return {"accuracy": accuracy, "seconds": seconds} | json.loads(costs_path.read_text())


def cost(name: str, args: argparse.Namespace, frames: str = "", iters: int = 10) -> dict:
    """model_cost on a batch of real test records (`frames`: another trained frame encoder)."""
    features = cached_frames(args) if MODELS[name].get("model.frozen") else ""
    config = experiment(name, 0, args, features)
    if frames:
        config["model"]["encoders"]["video"]["frame_encoder"] = frames
    exp = experiment_from(config)
    source = open_source(exp.data)
    decode = source.decoder(exp.model.modalities)
    split = source.open_split("test")
    rows = [decode.map(split[i]) for i in range(exp.train.batch_size)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return model_cost(config, batch, iters=iters)


def frame_costs(args: argparse.Namespace) -> dict[str, dict]:
    """The seed model's cost with each trained frame encoder (ResNet-50 as written), measured
    once per workdir."""
    path = Path(args.workdir) / "frame_costs.json"
    if not path.is_file():
        costs = {f: cost("late_concat", args, f, iters=3) for f in FRAME_ENCODERS}
        path.write_text(json.dumps(costs, indent=2))
    return json.loads(path.read_text())


def _seeds(*rows: dict) -> str:
    """'3 seeds each', or '3 and 1 seeds' when the rows have different numbers of seeds."""
    counts = [len(r["accuracy"]["test"]) for r in rows]
    if len(set(counts)) == 1:
        return f"{counts[0]} seeds each"
    return f"{' and '.join(map(str, counts))} seeds"


def _extract_seconds(args: argparse.Namespace) -> float:
    path = Path(args.workdir) / "extract_seconds.json"
    return json.loads(path.read_text()) if path.is_file() else 0.0


def pretrained_branch(rows: dict[str, dict], args: argparse.Namespace, clips: int) -> list[str]:
    """Cached frozen frames against training the frame encoder, for late concatenation."""
    trained, cached = rows.get("late_concat"), rows.get("late_concat_pretrained_frames")
    if not (trained and cached):
        return []
    accuracy = lambda r: statistics.mean(r["accuracy"]["test"])
    return [
        "",
        "## The pretrained branch",
        "",
        f"Late concatenation on cached frozen EfficientNet-Lite0 frames trains "
        f"{trained['step_s'] / cached['step_s']:.1f}x faster per step than with `{args.frames}` "
        f"trained on every frame ({1000 * cached['step_s']:.0f} against "
        f"{1000 * trained['step_s']:.0f} ms), after one extraction of "
        f"{_extract_seconds(args):.0f} s for all {clips} clips, and "
        f"reaches {accuracy(cached):.3f} test accuracy against {accuracy(trained):.3f} "
        f"({_seeds(cached, trained)}). "
        "The step times and FLOPs of `*_pretrained*` rows leave out the frozen frame encoder, "
        "which ran once, in the extraction.",
    ]


def dataset_card(info: dict, rows: dict[str, dict]) -> list[str]:
    """The dataset's settings and whether it meets its targets, from info.json and the rows."""
    build = info["build"]
    motion = build["motion"]
    single = {n: statistics.mean(rows[n]["accuracy"]["test"]) for n in ONLY if n in rows}
    fused = {n: statistics.mean(r["accuracy"]["test"]) for n, r in rows.items() if n not in ONLY}
    lines = [
        "",
        "## The dataset",
        "",
        f"`mmjax data prepare product-clips` (version {info['version']}, seed {build['seed']}): "
        f"{sum(build['clips'].values())} MP4 clips (H.264, {motion['frames']} frames of "
        f"{motion['size']}x{motion['size']} at {build['fps']} fps; AAC voice-over at "
        f"{build['sample_rate']} Hz, {build['audio_seconds']} s imported), imported through "
        "the manifest route. Settings: photo scale "
        f"{motion['scale']}, occluding bar width {motion['occluder']}, pixel noise std "
        f"{motion['noise']}; voice-over SNR {build['snr_db']} dB; "
        f"{build['title_missing']:.0%} of titles empty, {build['audio_missing']:.0%} of clips "
        f"without an audio track; titles of {build['title_words']} WordNet words of the group "
        f"and {build['distractors']} distractor adjectives.",
        "",
        "| group (the title) | classes (the voice-over's collection) |",
        "|---|---|",
    ]
    collection = {c: name for name, cs in build["collections"].items() for c in cs}
    for group, classes in build["groups"].items():
        lines.append(f"| {group} | {', '.join(f'{c} ({collection[c]})' for c in classes)} |")
    if single and fused:
        best_single = max(single, key=single.get)
        best_fused = max(fused, key=fused.get)
        lines += [
            "",
            f"Targets (test, mean over seeds): best single modality <= 0.80: "
            f"`{best_single}` {single[best_single]:.3f}; late concatenation >= 0.90: "
            + ", ".join(f"`{n}` {fused[n]:.3f}" for n in fused if n.startswith("late_concat"))
            + f"; best model `{best_fused}` {fused[best_fused]:.3f}.",
        ]
    return lines


def markdown(rows: dict[str, dict], args: argparse.Namespace, seconds: float) -> str:
    config = experiment("late_concat", 0, args)
    info = open_source(experiment_from(config).data).info
    batch = config["train"]["batch_size"]
    lines = [
        "# Product clips: category from frames, voice-over and title",
        "",
        f"Generated by `python tools/product_clips_results.py --steps {args.steps} --frames "
        f"{args.frames}` from every finished (model, seed) run in its workdir (the seeds column "
        f"says how many) on {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores, "
        f"{platform.machine()}); the runs took {seconds / 60:.1f} min of wall time in all "
        "(training and evaluation, plus the one frame-feature extraction). Dataset: "
        f"product-clips {info['version']} (train {info['splits']['train']['num_records']}, "
        f"test {info['splits']['test']['num_records']} clips; test photos, voices and accents "
        "never seen in training). Every model is `configs/clips_seed.py` with the change its "
        f"row names, trained {args.steps} steps of batch {batch} with Adam. Its frames: rows "
        "named `*_pretrained*` use frozen ImageNet EfficientNet-Lite0 frame features (the "
        "`efficientnet-lite0` catalog weights, temporal mean) cached once with `mmjax features "
        f"extract`; the other rows train `{args.frames}` on every frame with an LSTM over the "
        "frames (the table cannot afford ResNet-50 or ResNet-18 on 2 cores: see the last "
        "section). Accuracy is mean ± std over the seeds; a 'without' column evaluates the "
        "test split with that modality masked out for every clip. FLOPs are XLA's count for "
        "one example's forward pass; step time is the median of 10 train steps on this "
        "machine.",
        "",
        "| model | seeds | test | without title | without frames | without voice-over "
        "| params (head) | forward MFLOPs | train step ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        acc = r["accuracy"]
        cells = [mean_std(acc.get(f"without_{m}", [])) for m in ("text", "video", "audio")]
        lines.append(
            f"| `{name}` | {len(acc['test'])} | {mean_std(acc['test'])} | {' | '.join(cells)} "
            f"| {r['params'] / 1e3:.0f}k ({r['fusion_params'] / 1e3:.0f}k) "
            f"| {r['forward_flops'] / 1e6:.1f} | {1000 * r['step_s']:.0f} |"
        )
    clips = sum(entry["num_records"] for entry in info["splits"].values())
    lines += pretrained_branch(rows, args, clips)
    lines += dataset_card(info, rows)
    runs = 3 * len(rows)
    lines += [
        "",
        "## What the frame encoder costs",
        "",
        "`configs/clips_seed.py` as written (late concatenation) with each trained frame "
        f"encoder: its cost per train step of batch {batch} on this machine, and what "
        f"{args.steps} steps x 3 seeds x the {len(rows)} models above would "
        "take at that step time (training only).",
        "",
        "| frame encoder | params | forward MFLOPs | train step s | projected table hours |",
        "|---|---|---|---|---|",
    ]
    for frames, c in frame_costs(args).items():
        hours = c["step_s"] * args.steps * runs / 3600
        lines.append(
            f"| `{frames}` | {c['params'] / 1e6:.2f}M | {c['forward_flops'] / 1e6:.0f} "
            f"| {c['step_s']:.2f} | {hours:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    mmjax.log_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--models",
        nargs="*",
        default=list(MODELS),
        choices=list(MODELS),
        help="models to run (default: all); none: rewrite the table from the finished runs",
    )
    parser.add_argument("--frames", default="small_cnn", help="the trained frame encoder")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--workdir", default="runs/product_clips")
    parser.add_argument("--out", default="docs/results/product_clips.md")
    args = parser.parse_args()
    args.data_dir = str(data_root(args.data_dir))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(workdir / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    open_source(experiment_from(experiment("late_concat", 0, args)).data).verify()
    for name in args.models:
        for seed in args.seeds:
            run(name, seed, args)
    rows = {name: row(name, args) for name in MODELS if finished(name, args)}
    (workdir / "rows.json").write_text(json.dumps(rows, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    total = sum(r["seconds"] for r in rows.values()) + _extract_seconds(args)
    Path(args.out).write_text(markdown(rows, args, total))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
