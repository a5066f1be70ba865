"""Raw cells -> record arrays, the same at import (in worker processes) and at prediction.

Stored layout per modality: `image` uint8 [S, S, 3]; `audio` int16 [L] at a sample rate;
`video` uint8 [T, S, S, 3]; `text` int32 [L] with `text.attention_mask` bool [L]. A missing
modality is stored as zeros with `<m>_mask` False, so every record has the same shapes.
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from mmjax.batch_keys import presence_key
from mmjax.data.imports.table import Cell
from mmjax.data.media import Limits, MediaError, decode_audio, decode_image, decode_video

MEDIA = ("image", "audio", "video")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How media cells become arrays; rebuilt from a dataset's info by `from_info`."""

    image_size: int
    sample_rate: int
    audio_length: int
    frames: int
    video_audio: bool  # the clip's own audio track is the audio modality
    limits: Limits

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """modality -> (per-sample shape, stored dtype)."""
        s = self.image_size
        return {
            "image": ((s, s, 3), "uint8"),
            "audio": ((self.audio_length,), "int16"),
            "video": ((self.frames, s, s, 3), "uint8"),
        }

    def decode(self, modality: str, cell: Cell) -> dict[str, np.ndarray]:
        """One media cell (a path or the file's bytes) -> {modality: array} (a video may add
        its `audio`); MediaError on a file that cannot be decoded."""
        if modality == "image":
            return {"image": decode_image(cell, self.image_size, self.limits)}
        if modality == "audio":
            return {"audio": decode_audio(cell, self.sample_rate, self.audio_length, self.limits)}
        frames, audio = decode_video(
            cell,
            self.frames,
            self.image_size,
            sample_rate=self.sample_rate if self.video_audio else None,
            audio_length=self.audio_length if self.video_audio else None,
            limits=self.limits,
        )
        return {"video": frames} | ({"audio": audio} if audio is not None else {})

    def empty(self, modality: str) -> np.ndarray:
        shape, dtype = self.shapes()[modality]
        return np.zeros(shape, dtype)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "Preprocess":
        """The preprocessing an imported dataset's records were made with."""
        options = info["options"]
        return cls(
            image_size=options["image_size"],
            sample_rate=options["sample_rate"],
            audio_length=round(options["audio_seconds"] * options["sample_rate"]),
            frames=options["frames"],
            video_audio=info["modalities"].get("audio", {}).get("from") == "video",
            limits=Limits(options["max_pixels"], options["max_seconds"]),
        )


@dataclasses.dataclass(frozen=True)
class RowProblem:
    """Why one row cannot be imported: its name, the modality (or "label", "split", "row"),
    the file when there is one, and the reason."""

    row: str
    column: str
    path: str
    reason: str

    def line(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.row}, column {self.column}{where}: {self.reason}"


def resolve(cell: Cell, base_dir: Path | None) -> Cell:
    """A relative path resolved against `base_dir`; bytes and absolute paths as they are."""
    if isinstance(cell, str) and base_dir is not None and not Path(cell).is_absolute():
        return str(base_dir / cell)
    return cell


def decode_row(
    task: tuple[int, str, dict[str, Cell], dict[str, str], Path | None, Preprocess],
) -> tuple[int, dict[str, np.ndarray] | None, list[RowProblem]]:
    """(index, media arrays with presence masks, problems) of one row; runs in a worker.

    `task` is (index, row name, {modality: cell}, {modality: column}, base dir, Preprocess).
    """
    index, name, cells, columns, base_dir, preprocess = task
    record: dict[str, np.ndarray] = {}
    problems = []
    for m in MEDIA:
        if m not in cells:
            continue
        cell = resolve(cells[m], base_dir)
        if cell is None:
            continue
        try:
            record |= preprocess.decode(m, cell)
        except MediaError as err:
            path = cell if isinstance(cell, str) else f"<{len(cell)} bytes>"
            problems.append(RowProblem(name, columns.get(m, m), path, str(err)))
    if problems:
        return index, None, problems
    wanted = [m for m in MEDIA if m in cells or (m == "audio" and preprocess.video_audio)]
    for m in wanted:  # in a fixed order: the record's bytes do not depend on the process
        present = m in record
        record[presence_key(m)] = np.bool_(present)
        if not present:
            record[m] = preprocess.empty(m)
    return index, record, []
