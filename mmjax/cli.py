"""The `mmjax` command: a thin layer over the Python API."""

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

import mmjax
from mmjax.config import apply_overrides, load_config_file, set_value
from mmjax.data import sources
from mmjax.errors import MmjaxError

# sysexits.h EX_TEMPFAIL: the run was preempted after saving; the same command resumes it.
EXIT_PREEMPTED = 75


def _train(args: argparse.Namespace) -> int:
    from mmjax import distributed

    # Before the config is read: a config file may build arrays, which starts JAX's backend.
    distributed.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        auto=args.distributed,
        heartbeat_timeout_s=args.heartbeat_timeout,
    )
    config = apply_overrides(load_config_file(args.config), args.set)
    if args.data_dir:
        set_value(config, "data.root", args.data_dir)
    results = mmjax.train(config, args.workdir, stop_after=args.stop_after, progress=not args.quiet)
    if results.get("preempted"):
        print(
            f"mmjax: preempted (SIGTERM) at step {results['steps']}: checkpoint saved in "
            f"{Path(args.workdir) / 'checkpoints'}; run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    if jax.process_index() == 0:
        print(json.dumps(results, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> None:
    from mmjax.train.loop import evaluate_workdir

    splits = tuple(args.split) if args.split else None
    results = evaluate_workdir(
        args.workdir, splits, data_root=args.data_dir or "", missing=tuple(args.without or ())
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'split':<12} {'accuracy':>9} {'loss':>8} {'examples':>9}")
    for split, r in results.items():
        print(f"{split:<12} {r['accuracy']:>9.4f} {r['loss']:>8.4f} {r['examples']:>9d}")


def _predict(args: argparse.Namespace) -> None:
    from mmjax.data.audio_io import prepare_waveform, read_wav
    from mmjax.data.image_io import load_image

    predictor = mmjax.load_predictor(args.workdir)
    for flag, modality in (("--image", "image"), ("--audio", "audio")):
        if getattr(args, modality) and modality not in predictor.modalities:
            raise MmjaxError(
                f"{flag}: this model takes {list(predictor.modalities)}, not {modality}"
            )
    inputs = {}
    if args.image:
        inputs["image"] = load_image(args.image, predictor.sample_shapes["image"])
    if args.audio:
        wave, rate = read_wav(args.audio)
        spec = predictor.dataset["modalities"]["audio"]
        inputs["audio"] = prepare_waveform(
            wave, rate, sample_rate=spec["sample_rate"], length=spec["shape"][0]
        )
    if not inputs:
        raise MmjaxError(
            f"predict needs at least one input file; the model takes {predictor.modalities}"
        )
    probs = predictor.predict(**inputs)
    if args.json:
        print(json.dumps({"probabilities": probs.tolist(), "prediction": int(np.argmax(probs))}))
        return
    for label, p in enumerate(probs):
        print(f"{label:>3} {p:7.4f} {'#' * round(p * 40)}")
    print(f"prediction: {int(np.argmax(probs))}")


def _data_prepare(args: argparse.Namespace) -> None:
    root = sources.data_root(args.data_dir or "")
    info = mmjax.DATASETS.get(args.name).prepare(root, small=args.small)
    sizes = ", ".join(f"{s} {v['num_records']}" for s, v in info["splits"].items())
    print(f"prepared {args.name} in {root / args.name}: {sizes}")


def _features_extract(args: argparse.Namespace) -> None:
    from mmjax.features import extract

    config = apply_overrides(load_config_file(args.config), args.set)
    if args.data_dir:
        set_value(config, "data.root", args.data_dir)
    out = Path(args.out).absolute()
    info = extract(config, out, splits=tuple(args.split or ()))
    sizes = ", ".join(f"{s} {v['num_records']}" for s, v in info["splits"].items())
    print(
        f"cached {', '.join(info['cached'])} features in {args.out}: {sizes} "
        f"({info['extract_seconds']:.1f} s); train on them with --set data.features={args.out}"
    )


def _bench(args: argparse.Namespace) -> None:
    # The suite lives next to the package in a source checkout (DESIGN.md: benchmarks/).
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "harness.py").is_file():
        raise MmjaxError(
            "mmjax bench runs the suite in benchmarks/ of a source checkout: clone the "
            "repository and pip install -e '.[bench]' there"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import harness, report

    unknown = [s for s in args.suite if s not in harness.SUITES]
    if unknown:
        raise MmjaxError(f"unknown suite {unknown[0]!r}; suites: {', '.join(harness.SUITES)}")
    out = Path(args.out) if args.out else root / "benchmarks" / "results"
    ctx = harness.Context(smoke=args.smoke, out_dir=out)
    harness.run(list(args.suite) or list(harness.SUITES), ctx)
    table, figure = report.write(ctx.results_path)
    print(f"{len(ctx.records)} measurements appended to {ctx.results_path}")
    print(f"table: {table}\nplot: {figure}")


def zoo_markdown() -> str:
    """The registered encoders, fusion heads and models as a Markdown table (docs/zoo.md)."""
    lines = [
        "# The mmjax zoo",
        "",
        "Generated from the registries by `mmjax zoo list --markdown`.",
        "",
        "| kind | name | input | what it is |",
        "|---|---|---|---|",
    ]
    kinds = (("encoder", mmjax.ENCODERS), ("fusion", mmjax.FUSIONS), ("model", mmjax.MODELS))
    for kind, registry in kinds:
        for name in registry.names():
            entry = registry.get(name)
            summary = " ".join((entry.__doc__ or "").strip().split("\n\n")[0].split())
            if kind == "model":
                where = ", ".join(sorted(entry()["encoders"]))
            else:
                where = getattr(entry, "modality", "features")
            lines.append(f"| {kind} | `{name}` | {where} | {summary} |")
    return "\n".join(lines) + "\n"


def _zoo_list(args: argparse.Namespace) -> None:
    if args.markdown:
        print(zoo_markdown(), end="")
        return
    listing = {
        "models": mmjax.MODELS.names(),
        "encoders": mmjax.ENCODERS.names(),
        "fusions": mmjax.FUSIONS.names(),
        "datasets": mmjax.DATASETS.names(),
    }
    if args.json:
        print(json.dumps(listing, indent=2))
        return
    for kind, names in listing.items():
        print(f"{kind}: {', '.join(names)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmjax", description=mmjax.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or resume) an experiment")
    train.add_argument("--config", required=True, help="configs/NAME.py[:arg]")
    train.add_argument("--workdir", required=True)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--data-dir", help="dataset root (default $MMJAX_DATA or ~/.cache/mmjax)")
    train.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    cluster = train.add_argument_group(
        "multi-process", "one `mmjax train` per process, all with the same flags but the id"
    )
    cluster.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    cluster.add_argument("--num-processes", type=int, metavar="N")
    cluster.add_argument("--process-id", type=int, metavar="I", help="0 .. N-1")
    cluster.add_argument(
        "--distributed",
        action="store_true",
        help="join the cluster JAX detects (Cloud TPU, SLURM, Open MPI, ...)",
    )
    cluster.add_argument(
        "--heartbeat-timeout",
        type=int,
        metavar="SECONDS",
        help="end this process when a peer is silent this long (default 100)",
    )
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="evaluate a workdir's latest checkpoint")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", action="append", help="split name (repeatable)")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument(
        "--without", action="append", metavar="MODALITY", help="evaluate with it masked out"
    )
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="class probabilities for input files")
    predict.add_argument("--workdir", required=True)
    predict.add_argument("--image", help="image file (PNG, JPEG, ... or .npy)")
    predict.add_argument("--audio", help="PCM WAV file")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(run=_predict)

    data = commands.add_parser("data", help="dataset preparation")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser("prepare", help="build a dataset's ArrayRecord shards")
    prepare.add_argument("name")
    prepare.add_argument("--data-dir")
    prepare.add_argument("--small", action="store_true", help="a small build, for tests")
    prepare.set_defaults(run=_data_prepare)

    features = commands.add_parser("features", help="cached encoder outputs")
    features_commands = features.add_subparsers(dest="features_command", required=True)
    extract = features_commands.add_parser(
        "extract", help="run the config's frozen encoders once over the dataset"
    )
    extract.add_argument("--config", required=True, help="configs/NAME.py[:arg]")
    extract.add_argument("--out", required=True, help="a new directory for the features")
    extract.add_argument("--split", action="append", help="split name (repeatable; default all)")
    extract.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    extract.add_argument("--data-dir", help="dataset root (default $MMJAX_DATA or ~/.cache/mmjax)")
    extract.set_defaults(run=_features_extract)

    bench = commands.add_parser("bench", help="run the benchmark suites (benchmarks/)")
    bench.add_argument("suite", nargs="*", help="suites to run (default: all)")
    bench.add_argument("--smoke", action="store_true", help="every suite at tiny sizes")
    bench.add_argument("--out", help="results folder (default benchmarks/results)")
    bench.set_defaults(run=_bench)

    zoo = commands.add_parser("zoo", help="the registered components")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    listing = zoo_commands.add_parser("list")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--markdown", action="store_true", help="the table of docs/zoo.md")
    listing.set_defaults(run=_zoo_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except MmjaxError as err:
        print(f"mmjax: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
