"""A built dataset on disk, shared by the builders: `root/NAME/info.json` plus the shards
it lists, how to read and check them, and how a builder puts a new build in place."""

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmjax.data.source import DataSource
from mmjax.data.sources import Dataset
from mmjax.errors import DataError
from mmjax.registry import DATASETS


@dataclass(frozen=True)
class Built:
    """One built dataset's layout and the checks on its info.json (name, splits, version)."""

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

    def source(self, root: Path) -> DataSource:
        """The build under `root` as a DataSource; DataError says how to build it if absent."""
        return DataSource(
            Path(root) / self.name, self.load_info(root), f"rebuild with {self._prepare}"
        )

    def shard_paths(self, root: Path, split: str) -> list[Path]:
        """The shard files of one split, in order; DataError if the split was not built."""
        return self.source(root).shard_paths(split)

    def verify(self, root: Path) -> None:
        """Checks every shard's sha256 against info.json; DataError names the first bad shard."""
        self.source(root).verify()

    def register(self, prepare: Callable[..., dict]) -> None:
        """Registers the dataset in DATASETS with `prepare` as its builder."""
        DATASETS.register(self.name)(Dataset(prepare=prepare, source=self.source))

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
