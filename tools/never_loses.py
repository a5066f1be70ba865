"""Does the fused model beat its best modality alone at every noise level, from clean inputs
to AV-Digits' default noise?

Trains one fusion head (`tools/compare_fusions.py`'s experiment) with every seed and
training variant as one `mmjax sweep`: fixed noise or noise levels drawn per example
(`data.noise_levels`), without and with modality dropout. Then evaluates each copy at noise
scales t = 0, 0.25, 0.5, 0.75, 1 of the default (image noise std t x 0.4; audio noise
amplitude t times the 0 dB one), on `test` (held-out TTS voices) and `test_human`, with both
modalities, with the image only and with the audio only. Writes a Markdown report and a PNG
of the curves:

    python tools/never_loses.py [--fusion late_concat] [--steps 1000] [--seeds 0 1 2]
        [--data-dir DIR] [--workdir runs/never_loses] [--out docs/results/never_loses.md]
        [--set-each data.noise_levels=False,True ...] [--set KEY=VALUE ...]

--set changes every copy (e.g. `--set train.balance=grad_blend --set model.unimodal_weight=1`).
Settings that a sweep cannot hold (`train.balance=grad_blend`, the probes) train the copies
one at a time with `mmjax.train`, in the folders the sweep would have used.

An interrupted run continues when started again with the same arguments: the sweep (or each
single run) resumes from its checkpoint and each copy's evaluation is kept in its folder
(never_loses.json).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import matplotlib
from compare_fusions import experiment
from noise_scales import SCALES, SPLITS, measure
from result_tables import mean_std

import mmjax
from mmjax.config import experiment_from
from mmjax.experiments import AVDIGITS_AUDIO_SNR_DB, AVDIGITS_IMAGE_NOISE
from mmjax.train.sweep_plan import parse_set_each, plan_sweep, single_run_settings

matplotlib.use("Agg")
import matplotlib.pyplot as plt

VARIANTS = {  # --set-each values of the sweep
    "data.noise_levels": ["False", "True"],
    "data.modality_dropout": ["0.0", "0.3"],
}


def measure_copy(copy_dir: Path, data_dir: str) -> dict:
    """{split: {input: [accuracy at each scale]}} of one trained copy (kept in its folder)."""
    done = copy_dir / "never_loses.json"
    if done.exists():
        return json.loads(done.read_text())
    out = measure(copy_dir, data_dir)
    done.write_text(json.dumps(out))
    return out


def train_copies(
    config: dict, single: dict, workdir: Path, seeds: list[int], variants: dict
) -> list[dict]:
    """Train every seed and variant; return the copies ({"name", "settings", ...}) as
    sweep.json records them. One sweep, or one `mmjax.train` run per copy where the config
    asks for what a sweep cannot do (`single`: those settings)."""
    if not single:
        mmjax.sweep(config, workdir, seeds=seeds, set_each=variants, progress=False)
        return json.loads((workdir / "sweep.json").read_text())["copies"]
    sweepable = json.loads(json.dumps(config))
    for key in single:  # planned without them, then each copy trains with them
        section, field = key.split(".")
        sweepable[section].pop(field)
    copies = plan_sweep(sweepable, seeds, variants).record()["copies"]
    for copy in copies:
        run_config = json.loads(json.dumps(copy["config"]))
        for key, value in single.items():
            section, field = key.split(".")
            run_config[section][field] = value
        mmjax.train(run_config, workdir / copy["name"], progress=False)
    return copies


def variant_name(settings: dict) -> str:
    def describe(key: str, value) -> str:
        if key == "data.noise_levels":
            return "noise levels" if value else "fixed noise"
        if key == "data.modality_dropout":
            return f"modality dropout {value:g}"
        return f"{key}={value}"

    return ", ".join(describe(k, v) for k, v in settings.items()) or "as configured"


def summarise(curves: list[dict]) -> dict:
    """Per split and scale, over seeds: each input's accuracies and the margin of both over the
    better single input of each seed."""
    out = {}
    for split in SPLITS:
        rows = []
        for i in range(len(SCALES)):
            both = [c[split]["both"][i] for c in curves]
            best = [max(c[split]["image only"][i], c[split]["audio only"][i]) for c in curves]
            margins = [b - s for b, s in zip(both, best, strict=True)]
            noise = statistics.stdev(both) if len(both) > 1 else 0.0
            rows.append(
                {
                    "both": both,
                    "image only": [c[split]["image only"][i] for c in curves],
                    "audio only": [c[split]["audio only"][i] for c in curves],
                    "margin": margins,
                    # never loses: the mean margin is not below minus the seed noise
                    "holds": statistics.mean(margins) >= -noise,
                }
            )
        out[split] = rows
    return out


def plot(summaries: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(
        len(SPLITS), len(summaries), figsize=(4 * len(summaries), 6.5), squeeze=False
    )
    for col, (variant, summary) in enumerate(summaries.items()):
        for row, split in enumerate(SPLITS):
            ax = axes[row][col]
            for name, style in (("both", "-o"), ("image only", "--s"), ("audio only", ":^")):
                means = [statistics.mean(r[name]) for r in summary[split]]
                ax.plot(SCALES, means, style, label=name)
            ax.set_ylim(0, 1)
            ax.set_title(f"{variant}\n{split}", fontsize=9)
            ax.set_xlabel("noise (share of the default amplitude)")
            if col == 0:
                ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(args: argparse.Namespace, single: dict, summaries: dict[str, dict], png: str) -> str:
    trained = (
        f"every copy trained alone with `mmjax train` (a sweep cannot hold {', '.join(single)})"
        if single
        else "every variant and seed trained as one `mmjax sweep`"
    )
    command = f"--fusion {args.fusion} --steps {args.steps} --seeds "
    command += " ".join(map(str, args.seeds))
    command += "".join(f" --set-each {item}" for item in args.set_each or [])
    command += "".join(f" --set {item}" for item in args.set)
    lines = [
        "# Fusion that never loses to its best modality",
        "",
        f"Generated by `tools/never_loses.py {command}` on {jax.devices()[0].device_kind}: "
        f"`{args.fusion}` on the small CNN and CNN-LSTM (`tools/compare_fusions.py`'s "
        f"experiment), {trained}. Each copy is "
        "evaluated at noise scales t from clean (0) to AV-Digits' default (1: image noise std "
        f"{AVDIGITS_IMAGE_NOISE}, audio at {AVDIGITS_AUDIO_SNR_DB:g} dB SNR; t scales the noise "
        "amplitude), with both inputs and with each one alone (the other masked out).",
        "",
        "Each cell is the accuracy with both inputs, then the margin over the better single "
        "input (per seed, then mean ± std over seeds). ✓: the fused model holds, its mean "
        "margin is at least minus the seed std of its accuracy; ✗: it loses.",
        "",
    ]
    header = " | ".join(f"t={t:g}" for t in SCALES)
    for split in SPLITS:
        lines += [f"## {split}", "", f"| training | {header} |", "|---" * (len(SCALES) + 1) + "|"]
        for variant, summary in summaries.items():
            cells = [
                f"{mean_std(r['both'])}, {mean_std(r['margin'])} {'✓' if r['holds'] else '✗'}"
                for r in summary[split]
            ]
            lines.append(f"| {variant} | {' | '.join(cells)} |")
        lines.append("")
    held = [v for v, s in summaries.items() if all(r["holds"] for sp in SPLITS for r in s[sp])]
    verdict = (
        f"Holds at every level on both splits: {'; '.join(held)}."
        if held
        else "No variant holds at every level on both splits."
    )
    lines += [verdict, "", f"![curves]({png})", ""]
    return "\n".join(lines)


def main() -> None:
    mmjax.log_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fusion", default="late_concat")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--workdir", default="runs/never_loses")
    parser.add_argument("--out", default="docs/results/never_loses.md")
    parser.add_argument(
        "--set-each",
        action="append",
        metavar="KEY=V1,V2",
        help="the training variants (default: data.noise_levels=False,True and "
        "data.modality_dropout=0.0,0.3)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="for every copy"
    )
    args = parser.parse_args()
    variants = parse_set_each(args.set_each) if args.set_each else VARIANTS
    data_dir = str(mmjax.data.sources.data_root(args.data_dir))
    config = mmjax.config.ConfigDict(experiment(args.fusion, args.seeds[0], args.steps, data_dir))
    config.train.eval_splits = list(SPLITS)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        mmjax.config.set_value(config, key, value)
    workdir = Path(args.workdir) / args.fusion
    started = time.perf_counter()
    single = single_run_settings(experiment_from(config.to_dict()))
    copies = train_copies(config.to_dict(), single, workdir, args.seeds, variants)
    trained_s = time.perf_counter() - started
    by_variant: dict[str, list[dict]] = {}
    for copy in copies:
        curves = measure_copy(workdir / copy["name"], data_dir)
        label = ", ".join([variant_name(copy["settings"]), *args.set])
        by_variant.setdefault(label, []).append(curves)
        print(copy["name"], json.dumps(curves), flush=True)
    summaries = {variant: summarise(curves) for variant, curves in by_variant.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(summaries, png)
    out.write_text(markdown(args, single, summaries, png.name))
    print(out.read_text(), f"\ntraining: {trained_s:.0f} s", flush=True)


if __name__ == "__main__":
    main()
