"""What every import route (manifest, folder, TFDS, Hugging Face) hands the importer: a table
of rows whose cells are still raw (paths, bytes, strings), decoded later in worker processes."""

import dataclasses
from collections.abc import Callable
from pathlib import Path

# A raw cell: None (missing for this row), a str (a media file's path, or the text itself for
# the text modality), or bytes (an encoded media file: PNG, JPEG, WAV, FLAC, MP4, ...).
Cell = str | bytes | None

MODALITIES = ("image", "audio", "video", "text")


@dataclasses.dataclass(frozen=True)
class Table:
    """Rows to import. `row(i)` reads row i's raw cells in the importer's process; decoding
    happens in workers, so a table never holds decoded media.

    `labels[i]` is row i's label as text ("" when the cell is empty: a row-level problem);
    `class_names`, when the source defines them (a TFDS/HF ClassLabel), fixes the class order,
    otherwise the importer sorts the labels it sees. `splits[i]` is "train", "val", "test" or ""
    (no split given); None when the source has no split information at all.
    """

    source: str  # what was read, for info.json and messages ("clips.csv", "tfds mnist:3.0.1")
    columns: dict[str, str]  # modality -> the source column (or file kind) it came from
    labels: list[str]
    row_names: list[str]  # how messages name row i ("line 12", "train[3]", "photos/cat/x.jpg")
    row: Callable[[int], dict[str, Cell]]  # {modality: raw cell} for every modality in columns
    class_names: list[str] | None = None
    splits: list[str] | None = None
    groups: list[str] | None = None  # --group-by values: a group never spans two splits
    base_dir: Path | None = None  # relative paths in cells resolve against it
    sha256: str = ""  # of the source file(s), recorded in info.json
    problems: dict[int, str] = dataclasses.field(default_factory=dict)  # found while reading
    settings: dict[str, object] = dataclasses.field(default_factory=dict)  # how it was read

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.columns)
