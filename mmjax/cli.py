"""The `mmjax` command: a thin layer over the Python API."""

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

import mmjax
from mmjax.config import (
    ConfigDict,
    apply_overrides,
    load_config_file,
    parse_overrides,
    set_value,
)
from mmjax.data import sources
from mmjax.errors import MmjaxError
from mmjax.folders import output_folder
from mmjax.progress import log_to_stderr

# sysexits.h EX_TEMPFAIL: the run was preempted after saving; the same command resumes it.
EXIT_PREEMPTED = 75


def _join_cluster(args: argparse.Namespace) -> None:
    """Start JAX's multi-process runtime from the cluster flags (or the environment). Called
    before the config is read: a config file may build arrays, which starts JAX's backend."""
    from mmjax import distributed

    distributed.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        auto=args.distributed,
        heartbeat_timeout_s=args.heartbeat_timeout,
    )


def _train(args: argparse.Namespace) -> int:
    _join_cluster(args)
    if args.data:
        config = _chosen_config(args)
    else:
        if args.fusion:
            raise MmjaxError("--fusion picks the head of a chosen model: use it with --data")
        config = _config_file(args)
    results = mmjax.train(config, args.workdir, stop_after=args.stop_after, progress=not args.quiet)
    return _report_training(results, args.workdir)


def _config_file(args: argparse.Namespace) -> ConfigDict:
    """--config with the --set overrides and --data-dir."""
    config = apply_overrides(load_config_file(args.config), args.set)
    if args.data_dir:
        set_value(config, "data.root", args.data_dir)
    return config


def _report_training(results: dict[str, Any], workdir: str) -> int:
    """Print a train or sweep call's results (process 0); EXIT_PREEMPTED if it was preempted."""
    if results.get("preempted"):
        print(
            f"mmjax: preempted (SIGTERM) at step {results['steps']}: checkpoint saved in "
            f"{Path(workdir) / 'checkpoints'}; run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    if jax.process_index() == 0:
        print(json.dumps(results, indent=2))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from mmjax.train.sweep import sweep
    from mmjax.train.sweep_plan import parse_set_each

    _join_cluster(args)
    results = sweep(
        _config_file(args),
        args.workdir,
        seeds=args.seeds,
        set_each=parse_set_each(args.set_each),
        shared_order=args.shared_order,
        program=args.program,
        stop_after=args.stop_after,
        progress=not args.quiet,
    )
    return _report_training(results, args.workdir)


def _chosen_config(args: argparse.Namespace) -> ConfigDict:
    """The model `--data` chooses for the dataset with the `--set` overrides, printed and
    written to the workdir."""
    from mmjax import auto_config

    config = auto_config.choose(
        args.data,
        Path(args.workdir),
        fusion=args.fusion or "late_concat",
        root=args.data_dir or "",
        overrides=parse_overrides(args.set),
    )
    path = Path(args.workdir) / auto_config.CONFIG_FILE
    if jax.process_index() == 0:
        chosen = auto_config.describe(config)
        print(f"mmjax: chose for {args.data!r}:\n{chosen}\n  (written to {path})")
    return config


def _eval(args: argparse.Namespace) -> None:
    from mmjax.train.loop import evaluate_workdir

    splits = tuple(args.split) if args.split else None
    results = evaluate_workdir(
        args.workdir,
        splits,
        data_root=args.data_dir or "",
        missing=tuple(args.without or ()),
        best=args.best,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'split':<12} {'accuracy':>9} {'macro F1':>9} {'loss':>8} {'examples':>9}")
    for split, r in results.items():
        cells = f"{r['accuracy']:>9.4f} {r['macro_f1']:>9.4f} {r['loss']:>8.4f}"
        print(f"{split:<12} {cells} {r['examples']:>9d}")
    print("(per-class accuracy and the confusion matrix: --json)")


def _robustness(args: argparse.Namespace) -> None:
    from mmjax import robustness

    reference = None
    if args.reference:
        try:
            reference = json.loads(Path(args.reference).read_text())
            reference["curves"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise MmjaxError(
                f"--reference {args.reference!r}: not a robustness.json written by "
                f"`mmjax robustness` ({err})"
            ) from None
    robustness.check_levels(args.levels)
    predictor, title = _trained_or_published(args, "robustness")
    default_out = Path(args.workdir) / "robustness" if args.workdir else f"robustness-{args.model}"
    out = Path(args.out or default_out)
    result = robustness.measure(
        predictor,
        args.split,
        seed=args.seed,
        corruptions=args.corruptions,
        levels=args.levels,
        data_root=args.data_dir or "",
        reference=reference,
        progress=not (args.json or args.quiet),
    )
    try:
        json_path, png_path = robustness.write(result, out, title)
    except OSError as err:
        raise MmjaxError(f"--out {str(out)!r}: cannot write there ({err.strerror})") from None
    if args.json:
        print(json_path.read_text(), end="")
        return
    print(
        f"{title} on {args.split}: clean accuracy {result['clean']:.4f}, "
        f"{result['examples']} examples"
    )
    for m, accuracy in result["removed"].items():
        print(f"  without {m:<10} {accuracy:.4f}")
    for curve in result["curves"]:
        rr = curve["relative_robustness"]
        print(
            f"  {curve['modality'] + ':' + curve['corruption']:<24} "
            + " ".join(f"{a:.3f}" for a in curve["accuracy"])
            + (f"   relative robustness {rr:.3f}" if rr is not None else "")
            + (
                f"   below removal at levels {curve['levels_below_removal']}"
                if curve["levels_below_removal"]
                else ""
            )
        )
    print(f"written: {json_path}, {png_path}")


def _trained_or_published(args: argparse.Namespace, command: str) -> tuple[Any, str]:
    """(the Predictor, its name) of --workdir or --model, exactly one of them."""
    if bool(args.workdir) == bool(args.model):
        raise MmjaxError(
            f"{command} needs one of --workdir RUN (a trained run) or --model NAME (a published "
            f"model), {'not both' if args.workdir else 'got neither'}"
        )
    if args.model:
        if args.best:
            raise MmjaxError("--best picks a trained run's best checkpoint: use it with --workdir")
        return mmjax.load_pretrained(args.model), args.model
    title = f"{args.workdir} (best checkpoint)" if args.best else str(args.workdir)
    return mmjax.load_predictor(args.workdir, best=args.best), title


def _fewshot(args: argparse.Namespace) -> None:
    from mmjax import fewshot

    fewshot.check_shots(args.shots, args.draws)
    if not args.l2 > 0:
        raise MmjaxError(f"--l2 {args.l2}: the L2 strength must be > 0")
    if args.out and not Path(args.out).absolute().parent.is_dir():
        raise MmjaxError(f"--out {args.out!r}: its folder does not exist")
    predictor, title = _trained_or_published(args, "fewshot")
    result = fewshot.evaluate(
        predictor,
        args.shots,
        draws=args.draws,
        l2=args.l2,
        train_split=args.train_split,
        test_split=args.split,
        data_root=args.data_dir or "",
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"model": title, **result}, indent=2) + "\n")
    if args.json:
        print(json.dumps({"model": title, **result}, indent=2))
        return
    print(
        f"{title}: {args.draws}-draw mean ± std accuracy on {args.split!r} of linear probes "
        f"fitted on N examples per class of {args.train_split!r} (L2 {args.l2:g})"
    )
    shots = result["shots"]
    print(f"{'representation':<16} {'dim':>5} " + " ".join(f"{f'{k}-shot':>15}" for k in shots))
    for rep, r in result["representations"].items():
        cells = [
            f"{r['accuracy'][str(k)]['mean']:.3f} ± {r['accuracy'][str(k)]['std']:.3f}"
            for k in shots
        ]
        print(f"{rep:<16} {r['dim']:>5} " + " ".join(f"{c:>15}" for c in cells))


PREDICT_MODALITIES = ("image", "audio", "video", "text")


def _predict(args: argparse.Namespace) -> None:
    predictor, _ = _trained_or_published(args, "predict")
    inputs = {}
    for modality in PREDICT_MODALITIES:
        value = getattr(args, modality)
        if value is None:
            continue
        if modality not in predictor.modalities:
            raise MmjaxError(
                f"--{modality}: this model takes {', '.join(predictor.modalities)}, not {modality}"
            )
        if modality != "text" and not Path(value).is_file():
            raise MmjaxError(f"--{modality}: file {value!r} does not exist")
        inputs[modality] = value
    if not inputs:
        flags = ", ".join(f"--{m}" for m in predictor.modalities)
        raise MmjaxError(f"predict needs at least one input; this model takes {flags}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        probs = predictor.predict_proba(**inputs)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"note: {warning.message}", file=sys.stderr)
    names = predictor.class_names
    best = names[int(np.argmax(probs))]
    if args.json:
        print(json.dumps({"prediction": best, "probabilities": dict(zip(names, probs.tolist()))}))
        return
    width = max(map(len, names))
    for k in np.argsort(-probs)[: args.top]:
        print(f"{names[k]:>{width}} {probs[k]:7.4f} {'#' * round(float(probs[k]) * 40)}")
    print(f"prediction: {best}")


def _data_prepare(args: argparse.Namespace) -> None:
    root = output_folder(sources.data_root(args.data_dir or ""), "--data-dir")
    info = mmjax.DATASETS.get(args.name).prepare(root, small=args.small, progress=not args.quiet)
    sizes = ", ".join(f"{s} {v['num_records']}" for s, v in info["splits"].items())
    print(f"prepared {args.name} in {root / args.name}: {sizes}")


def _data_import(args: argparse.Namespace) -> None:
    from mmjax.data import imports
    from mmjax.data.imports.external import parse_mapping

    mapping = parse_mapping(args.map) if args.map else None
    settings = {
        "image_size": args.image_size,
        "sample_rate": args.sample_rate,
        "audio_seconds": args.audio_seconds,
        "frames": args.frames,
        "text_length": args.text_length,
        "tokenizer": args.tokenizer,
        "val": args.val,
        "test": args.test,
        "seed": args.seed,
        "require": tuple(m.strip() for m in (args.require or "").split(",") if m.strip()),
        "on_error": args.on_error,
        "workers": args.workers,
        "max_pixels": args.max_pixels,
        "max_seconds": args.max_seconds,
    }
    common = {"data_dir": args.data_dir or "", "overwrite": args.overwrite} | settings
    common["progress"] = not args.quiet
    if not args.manifest and (args.label != "label" or args.group_by):
        raise MmjaxError(
            "--label and --group-by name manifest columns: use them with --manifest "
            "(TFDS and Hugging Face: --map label=COLUMN,group=COLUMN)"
        )
    if args.folder and mapping:
        raise MmjaxError("--map names columns; a --folder's modalities come from file extensions")
    if (args.tfds or args.hf) and not mapping:
        raise MmjaxError("--tfds and --hf need --map, e.g. --map image=image,label=label")
    if args.tfds and not args.tfds_dir:
        raise MmjaxError("--tfds needs --tfds-dir: the folder the dataset was prepared in")
    if args.manifest:
        imports.import_manifest(
            args.name,
            args.manifest,
            label=args.label,
            mapping=mapping,
            group_by=args.group_by or "",
            **common,
        )
    elif args.folder:
        imports.import_folder(args.name, args.folder, **common)
    elif args.tfds:
        imports.import_tfds(args.name, args.tfds, tfds_dir=args.tfds_dir, mapping=mapping, **common)
    else:
        imports.import_hf(args.name, args.hf, mapping=mapping, **common)


def _data_list(args: argparse.Namespace) -> None:
    rows = sources.list_datasets(sources.data_root(args.data_dir or ""))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no datasets under {sources.data_root(args.data_dir or '')}")
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<16} {row['kind']:<9} unreadable: {row['error']}")
            continue
        sizes = ", ".join(f"{s} {n}" for s, n in row["splits"].items())
        print(
            f"{row['name']:<16} {row['kind']:<9} {', '.join(row['modalities']):<24} "
            f"{row['classes']:>4} classes  {sizes}  ({row['source']})"
        )


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
    # The suite lives next to the package in a source checkout (docs/architecture.md: Layout).
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
    suites = list(args.suite) or list(harness.SUITES)
    if args.dry_run:
        harness.dry_run(suites, ctx)
        return
    harness.run(suites, ctx)
    table, figure = report.write(ctx.results_path)
    print(f"{len(ctx.records)} measurements appended to {ctx.results_path}")
    print(f"table: {table}\nplot: {figure or 'none (nothing measured here is charted)'}")


def zoo_markdown() -> str:
    """The registered encoders, fusion heads and models as a Markdown table (docs/zoo.md)."""
    lines = [
        "# The mmjax zoo",
        "",
        "Generated from the registries by `mmjax zoo list --markdown`.",
        "",
        "| kind | name | input | what it is | deviations from the paper |",
        "|---|---|---|---|---|",
    ]
    label = "Deviations from the paper:"
    kinds = (("encoder", mmjax.ENCODERS), ("fusion", mmjax.FUSIONS), ("model", mmjax.MODELS))
    for kind, registry in kinds:
        for name in registry.names():
            entry = registry.get(name)
            doc = (entry.__doc__ or "").strip()
            paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
            summary = paragraphs[0]
            deviations = "".join(p.removeprefix(label) for p in paragraphs if p.startswith(label))
            if kind == "model":
                where = ", ".join(sorted(entry()["encoders"]))
            else:
                where = getattr(entry, "modality", "features")
            lines.append(f"| {kind} | `{name}` | {where} | {summary} | {deviations.strip()} |")
    return "\n".join(lines) + "\n"


def _export(args: argparse.Namespace) -> None:
    from mmjax.export import export_model

    predictor, title = _trained_or_published(args, "export")
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    path = export_model(predictor, args.out, platforms=platforms)
    size = path.stat().st_size
    print(f"exported {title} to {path} ({size / 1e3:.0f} kB; platforms {', '.join(platforms)})")


def _plot(args: argparse.Namespace) -> None:
    from mmjax.plot_runs import plot_runs

    for path in plot_runs(args.workdir, args.out, split=args.split, data_root=args.data_dir or ""):
        print(f"written: {path}")


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


def _add_import_parser(data_commands: Any) -> argparse.ArgumentParser:
    from mmjax.data.imports.build import ON_ERROR, TOKENIZERS, ImportOptions

    d = ImportOptions()
    imp = data_commands.add_parser(
        "import", help="import your own data: a manifest, a folder, TFDS or Hugging Face"
    )
    imp.add_argument("name", help="the new dataset's name (under the data root)")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="CSV, JSONL or Parquet: a row per example")
    source.add_argument("--folder", help="ROOT/[train|val|test/]CLASS/FILE")
    source.add_argument("--tfds", metavar="NAME[:CONFIG]", help="a prepared TFDS dataset")
    source.add_argument("--hf", metavar="DIR", help="a saved Hugging Face dataset or imagefolder")
    imp.add_argument("--tfds-dir", help="where the TFDS dataset was prepared")
    imp.add_argument("--map", help="modality=column pairs: image=photo,text=title,label=y")
    imp.add_argument("--label", default="label", help="the manifest's label column")
    imp.add_argument("--group-by", metavar="COLUMN", help="keep each group in one split")
    imp.add_argument("--image-size", type=int, default=d.image_size, help="square side, px")
    imp.add_argument("--sample-rate", type=int, default=d.sample_rate, help="audio rate, Hz")
    imp.add_argument("--audio-seconds", type=float, default=d.audio_seconds)
    imp.add_argument("--frames", type=int, default=d.frames, help="frames per video clip")
    imp.add_argument("--text-length", type=int, default=d.text_length, help="tokens per text")
    imp.add_argument("--tokenizer", choices=TOKENIZERS, default=d.tokenizer)
    imp.add_argument("--val", type=float, default=d.val, help="val share without a split column")
    imp.add_argument("--test", type=float, default=d.test)
    imp.add_argument("--seed", type=int, default=d.seed)
    imp.add_argument("--require", metavar="M1,M2", help="modalities no row may miss")
    imp.add_argument("--on-error", choices=ON_ERROR, default=d.on_error)
    imp.add_argument("--workers", type=int, default=d.workers, help="decoding processes")
    imp.add_argument("--max-pixels", type=int, default=d.max_pixels)
    imp.add_argument("--max-seconds", type=float, default=d.max_seconds)
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    imp.add_argument("--data-dir")
    imp.set_defaults(run=_data_import)
    return imp


def _add_cluster_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    cluster = parser.add_argument_group(
        "multi-process", f"one `mmjax {command}` per process, all with the same flags but the id"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmjax", description=mmjax.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or resume) an experiment")
    what = train.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="configs/NAME.py[:arg]")
    what.add_argument(
        "--data", metavar="NAME", help="a dataset: train a model chosen for it (see --fusion)"
    )
    train.add_argument("--workdir", required=True)
    train.add_argument("--fusion", help="with --data: the fusion head (default late_concat)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--data-dir", help="dataset root (default $MMJAX_DATA or ~/.cache/mmjax)")
    train.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step")
    _add_cluster_arguments(train, "train")
    train.set_defaults(run=_train)

    sweep = commands.add_parser(
        "sweep",
        help="train copies of one model (seeds, learning rates, ...) as one compiled program",
        description="Train one copy of the config per seed and per combination of --set-each "
        "values as one compiled program; each copy ends as a workdir of its own, WORKDIR/<copy>, "
        "equal to `mmjax train` of its config.",
    )
    sweep.add_argument("--config", required=True, help="configs/NAME.py[:arg]")
    sweep.add_argument("--workdir", required=True)
    sweep.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED", help="train.seed of the copies"
    )
    sweep.add_argument(
        "--set-each",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="one copy per value (per seed); repeatable: every combination",
    )
    sweep.add_argument(
        "--shared-order",
        action="store_true",
        help="every copy reads the first copy's batches (one input pipeline)",
    )
    sweep.add_argument(
        "--program",
        choices=("auto", "vmap", "unrolled"),
        default="auto",
        help="the copies' steps vmapped (GPU, TPU) or side by side (auto: unrolled on CPU)",
    )
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sweep.add_argument("--data-dir", help="dataset root (default $MMJAX_DATA or ~/.cache/mmjax)")
    sweep.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step")
    _add_cluster_arguments(sweep, "sweep")
    sweep.set_defaults(run=_sweep)

    evaluate = commands.add_parser("eval", help="evaluate a workdir's latest checkpoint")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", action="append", help="split name (repeatable)")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument(
        "--without", action="append", metavar="MODALITY", help="evaluate with it masked out"
    )
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="the class (and probabilities) of new inputs")
    predict.add_argument("--workdir", help="a trained run's directory")
    predict.add_argument("--model", help="a published model's name (mmjax.published_names())")
    predict.add_argument("--image", help="image file (PNG, JPEG, WebP, ...)")
    predict.add_argument("--audio", help="audio file (WAV; imported datasets: FLAC, OGG, MP3 too)")
    predict.add_argument("--video", help="video file (MP4, WebM, ...)")
    predict.add_argument("--text", help="the text itself (a title, a caption)")
    predict.add_argument("--top", type=int, default=10, help="classes shown (default 10)")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(run=_predict)

    robust = commands.add_parser(
        "robustness", help="accuracy under corrupted and missing modalities, as curves"
    )
    robust.add_argument("--workdir", help="a trained run's directory")
    robust.add_argument("--model", help="a published model's name (mmjax.published_names())")
    robust.add_argument("--split", default="test", help="the split to measure (default test)")
    robust.add_argument(
        "--out", help="folder for robustness.json and .png (default WORKDIR/robustness)"
    )
    robust.add_argument("--seed", type=int, default=0, help="seeds every corruption's randomness")
    robust.add_argument(
        "--corruptions",
        nargs="+",
        default=[],
        metavar="[MODALITY:]NAME",
        help="only these corruptions (default: every one of the model's inputs)",
    )
    robust.add_argument(
        "--levels",
        nargs="+",
        type=int,
        default=list(range(10)),
        metavar="LEVEL",
        help="only these levels, 0-9 (level 0, the clean input, is always measured)",
    )
    robust.add_argument(
        "--reference",
        metavar="JSON",
        help="late fusion's robustness.json: adds MultiBench's effective robustness against it",
    )
    robust.add_argument("--data-dir")
    robust.add_argument("--json", action="store_true", help="print robustness.json")
    robust.set_defaults(run=_robustness)

    few = commands.add_parser(
        "fewshot", help="few-shot linear probes on the fused and per-encoder representations"
    )
    few.add_argument("--workdir", help="a trained run's directory")
    few.add_argument("--model", help="a published model's name (mmjax.published_names())")
    few.add_argument(
        "--shots",
        type=int,
        nargs="+",
        required=True,
        metavar="N",
        help="training examples per class, e.g. 1 5 10",
    )
    few.add_argument("--draws", type=int, default=5, help="random support sets (default 5)")
    few.add_argument("--l2", type=float, default=2.0**10, help="ridge strength (default 1024)")
    few.add_argument("--train-split", default="train", help="where supports are drawn")
    few.add_argument("--split", default="test", help="the split classified (default test)")
    few.add_argument("--out", help="also write the result to this JSON file")
    few.add_argument("--data-dir")
    few.add_argument("--json", action="store_true")
    few.set_defaults(run=_fewshot)

    data = commands.add_parser("data", help="dataset preparation")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser("prepare", help="build a dataset's ArrayRecord shards")
    prepare.add_argument("name")
    prepare.add_argument("--data-dir")
    prepare.add_argument("--small", action="store_true", help="a small build, for tests")
    prepare.set_defaults(run=_data_prepare)
    imp = _add_import_parser(data_commands)
    data_listing = data_commands.add_parser("list", help="built and imported datasets")
    data_listing.add_argument("--data-dir")
    data_listing.add_argument("--json", action="store_true")
    data_listing.set_defaults(run=_data_list)

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
    bench.add_argument(
        "--dry-run",
        action="store_true",
        help="list what each suite will measure, with a time estimate; measure nothing",
    )
    bench.set_defaults(run=_bench)

    exp = commands.add_parser(
        "export", help="the inference function as a jax.export file (runs with jax + numpy)"
    )
    exp.add_argument("--workdir", help="a trained run's directory")
    exp.add_argument("--model", help="a saved model's name or folder (mmjax.load_pretrained)")
    exp.add_argument("--out", required=True, help="the file to write (e.g. model.jaxexport)")
    exp.add_argument(
        "--platforms", default="cpu", help="comma-separated: cpu, cuda, rocm, tpu (default cpu)"
    )
    exp.set_defaults(run=_export)

    plot = commands.add_parser(
        "plot", help="PNG charts of runs: curves, confusion matrices, accuracy per modality"
    )
    plot.add_argument("workdir", nargs="+", help="trained runs' directories")
    plot.add_argument("--out", required=True, help="folder for the PNGs (made if needed)")
    plot.add_argument("--split", default="", help="split of the confusion and modality charts")
    plot.add_argument("--data-dir", help="dataset root (default $MMJAX_DATA or ~/.cache/mmjax)")
    plot.set_defaults(run=_plot)

    zoo = commands.add_parser("zoo", help="the registered components")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    listing = zoo_commands.add_parser("list")
    form = listing.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("--markdown", action="store_true", help="the table of docs/zoo.md")
    listing.set_defaults(run=_zoo_list)
    for command in (evaluate, predict, robust, few, exp):
        command.add_argument(
            "--best",
            action="store_true",
            help="the run's best checkpoint (train.keep_best) instead of its latest",
        )
    commands_run = (train, sweep, evaluate, predict, robust, few, prepare, imp, data_listing)
    for command in (*commands_run, extract, bench, exp, plot, listing):
        _add_message_arguments(command)
    return parser


def _add_message_arguments(command: argparse.ArgumentParser) -> None:
    """--verbose / --quiet: how much of mmjax's log (and progress) reaches stderr."""
    amount = command.add_mutually_exclusive_group()
    amount.add_argument("--verbose", action="store_true", help="also debug messages")
    amount.add_argument("--quiet", action="store_true", help="warnings and errors only")


def _configure_logging(args: argparse.Namespace) -> None:
    """--verbose / --quiet: the level of mmjax's messages on stderr."""
    log_to_stderr(
        logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        return args.run(args) or 0
    except MmjaxError as err:
        print(f"mmjax: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
