"""One kind of data source: a directory holding `info.json` and the ArrayRecord shards it lists.

Built datasets (`mmjax data prepare`), imported ones (`mmjax data import`) and cached-feature
stores (`mmjax features extract`) are all DataSources; the trainer asks a DataSource for its
info, its splits, its record decoder and its checks, and never which kind it is.
"""

import dataclasses
from pathlib import Path
from typing import Any

import grain

from mmjax.checksum import sha256_file
from mmjax.data.transforms import Decode
from mmjax.errors import ConfigError, DataError
from mmjax.pretrained.catalog import check_dataset_fits
from mmjax.pretrained.catalog import entry as catalog_entry


@dataclasses.dataclass(frozen=True)
class DataSource:
    """`directory/info.json` (`info`) and its shards. A split entry with a "missing" reason is
    a split that could not be built: `shard_paths` refuses it with the reason, `verify` skips it.
    `remedy` ends every message about a missing or changed file ("rebuild with ...")."""

    directory: Path
    info: dict[str, Any]
    remedy: str

    @property
    def name(self) -> str:
        return self.info["name"]

    def shard_paths(self, split: str) -> list[Path]:
        """The shard files of one split, in order; DataError if it is absent or not built."""
        splits = self.info["splits"]
        if split not in splits:
            raise DataError(
                f"split: {self.name!r} has no split {split!r} (it has {', '.join(splits)})"
            )
        if "missing" in splits[split]:
            raise DataError(
                f"{self.name} split {split!r} was not built: {splits[split]['missing']}"
            )
        paths = [self.directory / shard["file"] for shard in splits[split]["shards"]]
        for path in paths:
            if not path.is_file():
                raise DataError(f"{path} is missing; {self.remedy}")
        return paths

    def verify(self) -> None:
        """Checks every shard's sha256 against info.json; DataError names the first bad shard."""
        for split, entry in self.info["splits"].items():
            if "missing" in entry:
                continue
            for path, shard in zip(self.shard_paths(split), entry["shards"], strict=True):
                if sha256_file(path) != shard["sha256"]:
                    raise DataError(
                        f"{path}: sha256 differs from info.json's {shard['sha256']}; the shard "
                        f"changed since it was written: {self.remedy}"
                    )

    def open_split(self, split: str) -> grain.sources.ArrayRecordDataSource:
        """Random-access source over one split's records (bytes; see `decoder`)."""
        return grain.sources.ArrayRecordDataSource([str(p) for p in self.shard_paths(split)])

    def decoder(self, modalities: tuple[str, ...]) -> Decode:
        """record bytes -> model inputs, checking shapes and labels against this info."""
        info_modalities = self.info["modalities"]
        shapes = tuple(
            (m, tuple(info_modalities[m]["shape"])) for m in modalities if m in info_modalities
        )
        return Decode(modalities, shapes=shapes, num_classes=self.info["num_classes"])

    def sample_shapes(self, modalities: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        """Per-sample input shapes of `modalities`."""
        return {m: tuple(self.info["modalities"][m]["shape"]) for m in modalities}

    def description(self) -> dict[str, Any]:
        """What a model trained on this source needs to take new inputs (recorded in its
        workdir and published card): classes, modalities, the tokenizer with a words
        vocabulary's tokens, and an import's preprocessing options."""
        keys = ("name", "num_classes", "class_names", "modalities", "options")
        out = {k: self.info[k] for k in keys if k in self.info}
        if "text_vocab" in self.info:
            vocab = dict(self.info["text_vocab"])
            if "file" in vocab:
                path = self.directory / vocab["file"]
                vocab["tokens"] = path.read_text(encoding="utf-8").splitlines()
            out["text_vocab"] = vocab
        return out

    def build_checksums(self) -> dict[str, Any]:
        """{name, version, shards: {split: {file: sha256}}}: what identifies this build."""
        return {
            "name": self.name,
            "version": self.info.get("version"),
            "shards": {
                split: {s["file"]: s["sha256"] for s in entry.get("shards", ())}
                for split, entry in self.info["splits"].items()
            },
        }

    def check_experiment(self, exp: Any) -> None:
        """ConfigError unless `exp` (an ExperimentConfig) can train on this source: every
        model modality is here, and catalog weights fit its audio rate and tokenizer."""
        for m in exp.model.modalities:
            if m not in self.info["modalities"]:
                raise ConfigError(
                    f"model.encoders.{m}: dataset {self.name!r} has no {m!r} modality "
                    f"(it has {', '.join(sorted(self.info['modalities']))})"
                )
        for m, name in exp.model.pretrained:
            check_dataset_fits(catalog_entry(name), m, self.info)

    def check_model(self, model: Any) -> None:
        """ConfigError unless `model`'s weights fit this source (always, but for caches)."""


def class_names(description: dict[str, Any]) -> list[str]:
    """The class names of a dataset `description` (`DataSource.description`), or "0", "1",
    ... for a dataset that names none."""
    return list(description.get("class_names") or map(str, range(description["num_classes"])))
