"""Table -> an imported dataset: row checks, splits, text ids, media decoded in worker
processes, ArrayRecord shards and info.json, written into a hidden folder and renamed into
place only when whole. Nothing of an existing dataset is touched unless `overwrite`."""

import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmjax.batch_keys import attention_key, presence_key
from mmjax.data.builders.built import move_into_place
from mmjax.data.imports import splits as split_rules
from mmjax.data.imports import vocab as words_vocab
from mmjax.data.imports.decode import Preprocess, RowProblem, decode_row
from mmjax.data.imports.stored import FORMAT, KIND
from mmjax.data.imports.table import Table
from mmjax.data.media import Limits
from mmjax.data.records import write_shards
from mmjax.errors import ConfigError, DataError
from mmjax.folders import output_folder
from mmjax.progress import Progress, progress_bar, progress_log
from mmjax.registry import DATASETS

TOKENIZERS = ("words", "minilm-l6")
ON_ERROR = ("fail", "skip")
SHOWN_PROBLEMS = 20
RECORDS_PER_SHARD = 10_000
CHUNK = 32  # rows per worker task batch: bounds memory whatever the dataset's size
REPORT = "import_report.json"


@dataclasses.dataclass(frozen=True)
class ImportOptions:
    """Every setting of an import (`mmjax data import`'s flags), recorded in info.json."""

    image_size: int = 64
    sample_rate: int = 16000
    audio_seconds: float = 2.0
    frames: int = 8
    text_length: int = 32
    tokenizer: str = "words"
    vocab_size: int = 20000
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    require: tuple[str, ...] = ()
    on_error: str = "fail"
    workers: int = 1
    max_pixels: int = Limits.max_pixels
    max_seconds: float = Limits.max_seconds

    def __post_init__(self):
        checks = {
            "--image-size": (self.image_size >= 8, ">= 8"),
            "--sample-rate": (self.sample_rate >= 1000, ">= 1000 (Hz)"),
            "--audio-seconds": (self.audio_seconds > 0, "> 0"),
            "--frames": (self.frames >= 1, ">= 1"),
            "--text-length": (self.text_length >= 1, ">= 1"),
            "--tokenizer": (self.tokenizer in TOKENIZERS, f"one of {', '.join(TOKENIZERS)}"),
            "--vocab-size": (self.vocab_size >= 3, ">= 3"),
            "--val": (0 <= self.val < 1, "in [0, 1)"),
            "--test": (0 <= self.test < 1 and self.val + self.test < 1, "in [0, 1 - val)"),
            "--seed": (self.seed >= 0, ">= 0"),
            "--on-error": (self.on_error in ON_ERROR, f"one of {', '.join(ON_ERROR)}"),
            "--workers": (self.workers >= 1, ">= 1"),
            "--max-pixels": (self.max_pixels >= 1, ">= 1"),
            "--max-seconds": (self.max_seconds > 0, "> 0"),
        }
        for flag, (ok, expected) in checks.items():
            if not ok:
                raise ConfigError(f"{flag} must be {expected}, got {self._value(flag)!r}")
        unknown = [m for m in self.require if m not in ("image", "audio", "video", "text")]
        if unknown:
            raise ConfigError(
                f"--require: {unknown} are not modalities; expected image, audio, video, text"
            )

    def _value(self, flag: str) -> Any:
        return getattr(self, flag[2:].replace("-", "_"))

    @property
    def audio_length(self) -> int:
        return round(self.audio_seconds * self.sample_rate)


def check_name(name: str) -> None:
    """ConfigError unless `name` can be a dataset folder and is not a built-in dataset's."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name or ""):
        raise ConfigError(
            f"dataset name {name!r}: expected letters, digits, '_', '.' or '-' (a folder name)"
        )
    if name in DATASETS:
        raise ConfigError(
            f"dataset name {name!r} is a built-in dataset (`mmjax data prepare {name}`); "
            "choose another name"
        )


def import_table(
    name: str,
    table: Table,
    options: ImportOptions,
    root: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Import `table` as dataset `name` under `root`; return its info. `extra` adds entries
    to info.json (a built-in dataset's builder records its version and settings there)."""
    started = time.perf_counter()
    root = Path(root)
    final = root / name
    if final.exists() and not overwrite:
        raise DataError(
            f"dataset {name!r} exists at {final}; pass --overwrite to replace it (it stays "
            "untouched until the new import is complete)"
        )
    output_folder(root, "--data-dir")
    remove_leftovers(root, name)
    log = progress_log(progress)
    problems: dict[int, list[RowProblem]] = {}
    labels, assigned = _labels_and_splits(table, options, problems)
    class_names = _class_names(table, [labels[i] for i in range(len(table)) if i not in problems])
    _no_training_example(table, labels, assigned, problems)
    text = _text_ids(table, options, assigned, problems)
    preprocess = Preprocess(
        image_size=options.image_size,
        sample_rate=options.sample_rate,
        audio_length=options.audio_length,
        frames=options.frames,
        video_audio="video" in table.columns and "audio" not in table.columns,
        limits=Limits(options.max_pixels, options.max_seconds),
    )
    build_dir = Path(tempfile.mkdtemp(prefix=f".{name}-build-{os.getpid()}-", dir=root))
    try:
        written = _write_splits(
            build_dir,
            table,
            options,
            preprocess,
            assigned,
            labels,
            class_names,
            text,
            problems,
            progress,
        )
        report = _report(table, problems)
        if problems and options.on_error == "fail":
            path = root / f"{name}.{REPORT}"
            path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
            raise DataError(_failure(name, problems, path))
        info = _info(
            name,
            table,
            options,
            preprocess,
            class_names,
            written,
            problems,
            text,
            started,
        ) | (extra or {})
        (build_dir / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        if text and text["vocab"]:
            (build_dir / words_vocab.FILE).write_text("\n".join(text["vocab"]) + "\n")
        info_json = json.dumps(info, indent=2, ensure_ascii=False)
        info = json.loads(info_json)  # as `DataSource.info` reads it back (lists, not tuples)
        (build_dir / "info.json").write_text(info_json)
        build_dir.chmod(0o755)
        move_into_place(build_dir, final)  # a kill midway: remove_leftovers puts it back
        (root / f"{name}.{REPORT}").unlink(missing_ok=True)  # an earlier failure's report
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    for warning in info["warnings"]:
        logging.getLogger("mmjax").warning(f"{name}: {warning}")
    sizes = ", ".join(f"{s} {v['num_records']}" for s, v in info["splits"].items())
    log(f"{name}: imported {sizes} into {final} ({info['import_seconds']:.1f} s)")
    return info


def remove_leftovers(root: Path, name: str) -> None:
    """Deletes hidden folders of earlier imports of `name` that were killed (their process is
    gone), and puts back a dataset a killed swap had moved aside."""
    for path in root.glob(f".{name}-build-*"):
        pid = path.name[len(f".{name}-build-") :].split("-")[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    for old in root.glob(f".{name}-old-*"):
        if (old / name).is_dir() and not (root / name).exists():
            (old / name).rename(root / name)
        shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _labels_and_splits(
    table: Table, options: ImportOptions, problems: dict
) -> tuple[list[str], list[str]]:
    """Row checks that need no decoding, then each row's split."""
    for i, reason in table.problems.items():
        problems.setdefault(i, []).append(RowProblem(table.row_names[i], "file", "", reason))
    labels = list(table.labels)
    for i, label in enumerate(labels):
        if not label:
            problems.setdefault(i, []).append(
                RowProblem(table.row_names[i], "label", "", "empty label")
            )
    given = None
    if table.splits is not None:
        given = []
        for i, value in enumerate(table.splits):
            split = split_rules.ALIASES.get(value.lower(), "")
            if not split:
                problems.setdefault(i, []).append(
                    RowProblem(
                        table.row_names[i],
                        "split",
                        "",
                        f"split {value!r} is not one of {', '.join(split_rules.ALIASES)}",
                    )
                )
            given.append(split)
    _empty_cells(table, options, problems)
    good = [i for i in range(len(table)) if i not in problems]
    if given is not None:
        return labels, given
    groups = [table.groups[i] for i in good] if table.groups is not None else None
    chosen = split_rules.assign_splits(
        [labels[i] for i in good], groups, val=options.val, test=options.test, seed=options.seed
    )
    assigned = [""] * len(table)
    for i, split in zip(good, chosen, strict=True):
        assigned[i] = split
    return labels, assigned


def _empty_cells(table: Table, options: ImportOptions, problems: dict) -> None:
    """A row with every modality empty, or an empty `--require`d one, is a problem."""
    for i in range(len(table)):
        cells = table.row(i)
        name = table.row_names[i]
        if all(cells.get(m) is None for m in table.columns) and i not in problems:
            problems.setdefault(i, []).append(
                RowProblem(name, "row", "", f"no modality: {', '.join(table.columns)} all empty")
            )
        for m in options.require:
            if m in table.columns and cells.get(m) is None:
                problems.setdefault(i, []).append(
                    RowProblem(name, table.columns[m], "", f"required modality {m!r} is empty")
                )
    from_video = "video" in table.columns and "audio" not in table.columns
    missing = [
        m for m in options.require if m not in table.columns and not (m == "audio" and from_video)
    ]
    if missing:
        raise ConfigError(
            f"--require {','.join(options.require)}: the source has no {missing} column "
            f"(it has {', '.join(table.columns)})"
        )


def _class_names(table: Table, labels: list[str]) -> list[str]:
    """The source's class order, else the labels sorted (as numbers when all are integers)."""
    if table.class_names is not None:
        return list(table.class_names)
    found = sorted(set(labels))
    if found and all(re.fullmatch(r"-?\d+", x) for x in found):
        return sorted(found, key=int)
    return found


def _no_training_example(
    table: Table, labels: list[str], assigned: list[str], problems: dict
) -> None:
    """Rows of a class that has no training row are problems: a model cannot learn it."""
    trained = {labels[i] for i, s in enumerate(assigned) if s == "train" and i not in problems}
    for i, split in enumerate(assigned):
        if i not in problems and split and labels[i] not in trained:
            problems.setdefault(i, []).append(
                RowProblem(
                    table.row_names[i],
                    "label",
                    "",
                    f"class {labels[i]!r} has no training example (this row is in {split})",
                )
            )


def _text_ids(
    table: Table, options: ImportOptions, assigned: list[str], problems: dict
) -> dict[str, Any] | None:
    """{"ids", "mask", "vocab"} of every row's text (empty text: missing), tokenised with
    `--tokenizer`; the words vocabulary is built from the train split only."""
    if "text" not in table.columns:
        return None
    texts = [table.row(i).get("text") or "" for i in range(len(table))]
    if options.tokenizer == "words":
        train = [t for i, t in enumerate(texts) if assigned[i] == "train" and i not in problems]
        vocab = words_vocab.build_vocab(train, options.vocab_size)
        ids, mask = words_vocab.encode_words(texts, vocab, options.text_length)
    else:
        from mmjax.pretrained.load import tokenize

        vocab = []
        ids, mask = tokenize(options.tokenizer, texts, length=options.text_length)
    present = np.array([bool(t) for t in texts])
    return {"ids": ids, "mask": mask, "present": present, "vocab": vocab}


def _write_splits(
    build_dir: Path,
    table: Table,
    options: ImportOptions,
    preprocess: Preprocess,
    assigned: list[str],
    labels: list[str],
    class_names: list[str],
    text: dict | None,
    problems: dict,
    progress: bool,
) -> dict[str, dict]:
    """Decodes and writes every split's good rows; decoding problems join `problems`."""
    class_index = {c: k for k, c in enumerate(class_names)}
    rows_of = {
        s: [i for i, a in enumerate(assigned) if a == s and i not in problems]
        for s in split_rules.SPLITS
    }
    bar = progress_bar(
        total=sum(map(len, rows_of.values())), enabled=progress, unit="row", desc="import"
    )
    written = {}
    with _decoder(options.workers) as decode_many:
        for split, rows in rows_of.items():
            counts: Counter = Counter()
            missing: Counter = Counter()
            records = _records(
                table,
                rows,
                decode_many,
                preprocess,
                options.require,
                labels,
                class_index,
                text,
                problems,
                (counts, missing),
                bar,
            )
            num_shards = max(1, -(-len(rows) // RECORDS_PER_SHARD))
            shards = write_shards(records, build_dir, split, num_shards)
            written[split] = {"shards": shards, "counts": counts, "missing": missing}
    bar.close()
    return written


def _records(
    table: Table,
    rows: list[int],
    decode_many: Any,
    preprocess: Preprocess,
    require: tuple[str, ...],
    labels: list[str],
    class_index: dict[str, int],
    text: dict | None,
    problems: dict,
    tallies: tuple[Counter, Counter],
    bar: Progress,
) -> Iterator[dict[str, np.ndarray]]:
    """The records of `rows`, decoded a chunk at a time; rows that fail are left out (a clip
    without an audio track fails when audio is `require`d). `tallies` (records per class,
    missing cells per modality) are counted as they go."""
    counts, missing = tallies
    columns = dict(table.columns)
    chunks = (
        [
            (i, table.row_names[i], table.row(i), columns, table.base_dir, preprocess)
            for i in rows[start : start + CHUNK * 4]
        ]
        for start in range(0, len(rows), CHUNK * 4)
    )
    for index, record, row_problems in decode_many(chunks):
        bar.update(1)
        if not row_problems and "audio" in require and _missing(record, "audio"):
            clip = table.row(index)["video"]
            row_problems = [
                RowProblem(
                    table.row_names[index],
                    columns["video"],
                    clip if isinstance(clip, str) else f"<{len(clip)} bytes>",
                    "required modality 'audio': the clip has no audio track",
                )
            ]
        if row_problems:
            problems[index] = row_problems
            continue
        if text is not None:
            record["text"] = text["ids"][index]
            record[attention_key("text")] = text["mask"][index]
            record[presence_key("text")] = np.bool_(text["present"][index])
        record["label"] = np.int32(class_index[labels[index]])
        record["source_row"] = np.int32(index)  # the table row it came from
        counts[labels[index]] += 1
        missing.update(m for m in ("image", "audio", "video", "text") if _missing(record, m))
        yield record


def _missing(record: dict[str, np.ndarray], m: str) -> bool:
    return presence_key(m) in record and not bool(record[presence_key(m)])


class _decoder:
    """A context giving `decode_many(chunks) -> results in order`, for an iterator of task
    chunks: in this process for one worker, else over a pool of worker processes (forkserver:
    a clean process, mmjax imported once, whatever threads this process runs) that decodes
    the next chunk while this process writes the records of the last. Only two chunks are in
    memory at a time, whatever the dataset's size.

    With workers > 1 the pool's processes import the main module: a script calling the
    import API needs the `if __name__ == "__main__":` guard."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers == 1:
            return lambda chunks: (decode_row(t) for chunk in chunks for t in chunk)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mmjax.data.imports.decode"])
        self.pool = context.Pool(self.workers)
        return self._ahead

    def _ahead(self, chunks: Iterator[list]) -> Iterator[tuple]:
        pending = None
        for chunk in chunks:
            submitted = self.pool.map_async(decode_row, chunk, chunksize=CHUNK // 4)
            if pending is not None:
                yield from pending.get()
            pending = submitted
        if pending is not None:
            yield from pending.get()

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _report(table: Table, problems: dict[int, list[RowProblem]]) -> dict[str, Any]:
    return {
        "source": table.source,
        "rows": len(table),
        "problem_rows": len(problems),
        "problems": [dataclasses.asdict(p) for i in sorted(problems) for p in problems[i]],
    }


def _failure(name: str, problems: dict[int, list[RowProblem]], report: Path) -> str:
    lines = [p.line() for i in sorted(problems) for p in problems[i]]
    shown = "\n  ".join(lines[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(lines) - SHOWN_PROBLEMS} more" if len(lines) > SHOWN_PROBLEMS else ""
    return (
        f"import of {name!r} stopped: {len(problems)} row(s) cannot be imported, so nothing was "
        f"built (--on-error fail). All problems: {report}\n  {shown}{more}\n"
        "Fix them, or pass --on-error skip to import without those rows"
    )


def _info(
    name: str,
    table: Table,
    options: ImportOptions,
    preprocess: Preprocess,
    class_names: list[str],
    written: dict[str, dict],
    problems: dict,
    text: dict | None,
    started: float,
) -> dict[str, Any]:
    missing: Counter = Counter()
    for entry in written.values():
        missing.update(entry["missing"])
    records = sum(sum(s["num_records"] for s in e["shards"]) for e in written.values())
    modalities = _modalities(table, options, preprocess, missing, records)
    shares = {"train": 1.0} | (
        {"val": options.val, "test": options.test} if table.splits is None else {}
    )
    warnings = split_rules.small_classes(
        {split: entry["counts"] for split, entry in written.items()},
        tuple(s for s, share in shares.items() if share > 0),
    )
    if preprocess.video_audio and "audio" not in modalities:
        warnings.append("no clip has an audio track: the dataset has no audio modality")
    info: dict[str, Any] = {
        "kind": KIND,
        "format": FORMAT,
        "name": name,
        "num_classes": len(class_names),
        "class_names": class_names,
        "modalities": modalities,
        "splits": {
            split: {
                "num_records": sum(s["num_records"] for s in entry["shards"]),
                "class_counts": {c: entry["counts"][c] for c in class_names if entry["counts"][c]},
                "shards": entry["shards"],
            }
            for split, entry in written.items()
        },
        "source": {
            "description": table.source,
            "columns": table.columns,
            "sha256": table.sha256,
            "settings": table.settings,
        },
        "options": dataclasses.asdict(options),
        "skipped_rows": len(problems),
        "report": REPORT,
        "warnings": warnings,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "import_seconds": round(time.perf_counter() - started, 2),
    }
    if text is not None:
        info["text_vocab"] = {"tokenizer": options.tokenizer, "length": options.text_length}
        if text["vocab"]:
            info["text_vocab"] |= {"file": words_vocab.FILE, "size": len(text["vocab"])}
    return info


def _modalities(
    table: Table, options: ImportOptions, preprocess: Preprocess, missing: Counter, records: int
) -> dict[str, dict]:
    """info.json's modality entries: shape, stored dtype, source column, missing count."""
    shapes = preprocess.shapes() | {"text": ((options.text_length,), "int32")}
    out = {}
    for m in ("image", "audio", "video", "text"):
        from_video = m == "audio" and preprocess.video_audio
        if m not in table.columns and not from_video:
            continue
        if from_video and missing[m] == records:
            continue  # no clip had an audio track
        shape, dtype = shapes[m]
        entry = {"shape": list(shape), "dtype": dtype, "missing": missing[m]}
        entry["column"] = table.columns["video" if from_video else m]
        if from_video:
            entry["from"] = "video"
        if m == "audio":
            entry["sample_rate"] = options.sample_rate
        if m == "text":
            entry["tokenizer"] = options.tokenizer
        out[m] = entry
    return out
