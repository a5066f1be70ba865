"""A folder `ROOT/[train|val|test/]CLASS/FILE` as an import Table.

The modality of a file comes from its extension; files of one class folder that share a stem
(`x.jpg`, `x.wav`, `x.txt`) are one example. Either every class folder sits in a split folder
or none does.
"""

import hashlib
from collections import defaultdict
from pathlib import Path

from mmjax.data.imports.splits import SPLITS
from mmjax.data.imports.table import MODALITIES, Table
from mmjax.data.media import EXTENSIONS, MediaError, read_text
from mmjax.errors import DataError


def folder_table(root: str | Path) -> Table:
    """The examples under `root`; a file of an unsupported type becomes a row whose problem
    names it, so `--on-error` decides."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"--folder: {str(root)!r} is not a directory")
    split_dirs = [d for d in _subdirs(root) if d.name in SPLITS]
    if split_dirs and len(split_dirs) != len(_subdirs(root)):
        others = [d.name for d in _subdirs(root) if d.name not in SPLITS]
        raise DataError(
            f"--folder {root}: mixes split folders ({', '.join(d.name for d in split_dirs)}) "
            f"with class folders ({', '.join(others)}); use ROOT/CLASS/FILE or "
            f"ROOT/{{{','.join(SPLITS)}}}/CLASS/FILE"
        )
    class_dirs = [(split.name, d) for split in split_dirs for d in _subdirs(split)] or [
        ("", d) for d in _subdirs(root)
    ]
    if not class_dirs:
        raise DataError(f"--folder {root}: no class folders (expected ROOT/CLASS/FILE)")
    samples = []  # (split, label, stem path, {modality: path}, unsupported files)
    for split, class_dir in class_dirs:
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and not file.name.startswith("."):
                by_stem[str(file.relative_to(class_dir).with_suffix(""))].append(file)
        for stem, files in sorted(by_stem.items()):
            samples.append((split, class_dir.name, class_dir / stem, files))
    modalities = sorted(
        {EXTENSIONS[f.suffix.lower()] for *_, files in samples for f in files if _known(f)},
        key=MODALITIES.index,
    )
    if not modalities:
        raise DataError(
            f"--folder {root}: no media files; supported: {', '.join(sorted(EXTENSIONS))}"
        )
    cells = [_sample_cells(files) for *_, files in samples]
    problems = {i: c.pop("problem") for i, c in enumerate(cells) if "problem" in c}
    return Table(
        source=f"folder {root}",
        columns={m: f"*{_suffixes(m)}" for m in modalities},
        labels=[label for _, label, _, _ in samples],
        row_names=[str(stem.relative_to(root)) for _, _, stem, _ in samples],
        row=lambda i: {m: cells[i].get(m) for m in modalities},
        splits=[split for split, *_ in samples] if split_dirs else None,
        base_dir=root,
        sha256=_listing_sha256(root, [f for *_, files in samples for f in files]),
        problems=problems,
    )


def _listing_sha256(root: Path, files: list[Path]) -> str:
    """A sha256 of the folder's listing (relative path and size of every file): what the
    import read, without hashing every media file twice."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(f"{file.relative_to(root)}\t{file.stat().st_size}\n".encode())
    return digest.hexdigest()


def _subdirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _known(file: Path) -> bool:
    return file.suffix.lower() in EXTENSIONS


def _suffixes(modality: str) -> str:
    return "|".join(sorted(s for s, m in EXTENSIONS.items() if m == modality))


def _sample_cells(files: list[Path]) -> dict[str, str | None]:
    """{modality: path, or a .txt file's text}; a file of an unknown type or a second file of
    one modality is kept under "problem" for the importer to report."""
    cells: dict[str, str] = {}
    for file in files:
        modality = EXTENSIONS.get(file.suffix.lower())
        if modality is None:
            cells["problem"] = (
                f"{file.name}: unsupported file type {file.suffix or '(none)'!r}; supported: "
                f"{', '.join(sorted(EXTENSIONS))}"
            )
        elif modality in cells:
            cells["problem"] = f"two {modality} files: {Path(cells[modality]).name}, {file.name}"
        elif modality == "text":
            try:
                cells["text"] = read_text(file) or None
            except MediaError as err:
                cells["problem"] = f"{file.name}: {err}"
        else:
            cells[modality] = str(file)
    return cells
