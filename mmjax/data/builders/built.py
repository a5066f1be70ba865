"""A built dataset on disk, shared by the builders: `root/NAME/info.json` plus the shards
it lists, how to read and check them, and how a builder puts a new build in place."""

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmjax.data.records import sha256_file
from mmjax.data.sources import Dataset
from mmjax.errors import DataError
from mmjax.registry import DATASETS


@dataclass(frozen=True)
class Built:
    """One dataset's layout. A split entry in info.json with a "missing" reason is a split
    that could not be built: `shard_paths` refuses it with the reason, `verify` skips it."""

    name: str  # the directory under the data root and `mmjax data prepare NAME`'s argument
    title: str  # the name messages use, e.g. "AV-Digits"
    version: str  # the only info.json version this mmjax reads
    splits: tuple[str, ...]
    sources: str  # how to install what a build reads, e.g. "`apt-get install unicode-data`"

    def load_info(self, root: Path) -> dict:
        """Reads `root/NAME/info.json`; DataError says how to build it when missing."""
        path = Path(root) / self.name / "info.json"
        if not path.is_file():
            raise DataError(
                f"{self.title} is not built: {path} is missing. Build it with "
                f"{self._prepare} (sources: {self.sources})"
            )
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: unreadable ({e}); rebuild with {self._prepare}") from None
        if not isinstance(info, dict) or set(self.splits) - set(info.get("splits", {})):
            raise DataError(f"{path}: expected splits {self.splits}; rebuild with {self._prepare}")
        if info.get("version") != self.version:
            raise DataError(
                f"{path}: built by {self.title} version {info.get('version')}, this mmjax reads "
                f"{self.version}; rebuild with {self._prepare}"
            )
        return info

    def shard_paths(self, root: Path, split: str) -> list[Path]:
        """The shard files of one split, in order; DataError if the split was not built."""
        if split not in self.splits:
            raise DataError(f"split: expected one of {self.splits}, got {split!r}")
        entry = self.load_info(root)["splits"][split]
        if "missing" in entry:
            raise DataError(f"{self.title} split {split!r} was not built: {entry['missing']}")
        paths = [Path(root) / self.name / shard["file"] for shard in entry["shards"]]
        for path in paths:
            if not path.is_file():
                raise DataError(f"{path} is missing; rebuild with {self._prepare}")
        return paths

    def verify(self, root: Path) -> None:
        """Checks every shard's sha256 against info.json; DataError names the first bad shard."""
        for split, entry in self.load_info(root)["splits"].items():
            if "missing" in entry:
                continue
            for path, shard in zip(self.shard_paths(root, split), entry["shards"], strict=True):
                if sha256_file(path) != shard["sha256"]:
                    raise DataError(
                        f"{path}: sha256 differs from info.json's {shard['sha256']}; the shard "
                        f"is corrupt, rebuild with {self._prepare}"
                    )

    def register(self, prepare: Callable[..., dict]) -> None:
        """Registers the dataset in DATASETS with `prepare` as its builder."""
        DATASETS.register(self.name)(
            Dataset(
                prepare=prepare,
                load_info=self.load_info,
                shard_paths=self.shard_paths,
                verify=self.verify,
            )
        )

    @property
    def _prepare(self) -> str:
        return f"`mmjax data prepare {self.name}`"


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """A fresh directory beside `final` to build into, moved over `final` when the block
    ends and deleted when it raises, so `final` only ever holds a whole build."""
    build_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}-build-", dir=final.parent))
    build_dir.chmod(0o755)  # mkdtemp's 0o700 would otherwise stick to the final dir
    try:
        yield build_dir
        move_into_place(build_dir, final)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise


def move_into_place(build_dir: Path, final: Path) -> None:
    """Renames the finished build over `final`; an old build is deleted only afterwards."""
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
    if final.exists():
        final.rename(old / final.name)
    build_dir.rename(final)
    shutil.rmtree(old)


def write_info(directory: Path, info: dict) -> None:
    """Writes `directory/info.json` as UTF-8, which `Built.load_info` reads."""
    text = json.dumps(info, indent=2, ensure_ascii=False)
    (Path(directory) / "info.json").write_text(text, encoding="utf-8")
