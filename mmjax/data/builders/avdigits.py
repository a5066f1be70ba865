"""AV-Digits: a handwritten digit image paired with a spoken digit (like AV-MNIST).

Images are scikit-learn's 1,797 real 8x8 digits. Training audio is synthesised offline
with espeak-ng (en, fr, es, it, ru voices x variants) and flite (English); val and test
use voices never heard in training. `test_human` holds real 8 kHz recordings (Asterisk
prompts) in the same languages, to measure TTS -> human transfer. Every clip goes
through `prepare_waveform`, the same preprocessing `mmjax predict` applies to user files.

Layout: `root/avdigits/info.json` plus `{split}.array_record-*` shards of npz records
{"image": uint8 [8,8,1], "audio": int16 [8000], "label": int64 [], "voice": str []}.
"""

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmjax.data.audio_io import prepare_waveform, read_wav
from mmjax.data.records import sha256_file, write_shards
from mmjax.data.sources import Dataset
from mmjax.errors import DataError, InputError
from mmjax.registry import DATASETS

NAME = "avdigits"
VERSION = "1.0.0"
SPLITS = ("train", "val", "test", "test_human")
NUM_CLASSES = 10
SAMPLE_RATE = 8000
NUM_SAMPLES = 8000
LANGUAGES = ("en", "fr", "es", "it", "ru")
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds")
ASTERISK_PACKAGES = tuple(f"asterisk-core-sounds-{lang}-wav" for lang in LANGUAGES)
APT_TTS = "apt-get install espeak-ng flite"
APT_HUMAN = "apt-get install " + " ".join(ASTERISK_PACKAGES)
APT_ALL = f"{APT_TTS} {' '.join(ASTERISK_PACKAGES)}"
PIP_SKLEARN = "pip install scikit-learn"
ENGLISH_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# kal16 is kal's speaker again and awb_time only speaks clock times.
FLITE_VOICES = ("kal", "awb", "rms", "slt")
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}  # the rest is train; for images and voices
HUMAN_IMAGES_PER_CLIP = 4
ESPEAK_SPEED = (90, 180)  # words per minute; the human prompts are slower than the default 175
ESPEAK_PITCH = (25, 75)  # 0..99
FLITE_STRETCH = (80, 130)  # duration stretch in percent
TRAIN_SHARDS = 2


@dataclass(frozen=True)
class Scale:
    espeak_voices_per_language: int
    flite_takes: int  # renditions per (flite voice, digit) at different speeds


FULL = Scale(espeak_voices_per_language=70, flite_takes=5)
SMALL = Scale(espeak_voices_per_language=5, flite_takes=1)


@dataclass(frozen=True)
class Voice:
    tool: str  # "espeak" or "flite"
    name: str  # what the record stores after "tool:", e.g. "fr-fr+m3"
    arg: str  # what the tool's voice flag gets, e.g. "roa/fr+m3"
    language: str

    @property
    def id(self) -> str:
        return f"{self.tool}:{self.name}"


@dataclass(frozen=True)
class Clip:
    voice: Voice
    label: int
    speed: float  # espeak: words per minute; flite: duration stretch
    pitch: int  # espeak only (0..99)

    def command(self, out: Path) -> list[str]:
        if self.voice.tool == "espeak":
            return [
                "espeak-ng", "-v", self.voice.arg, "-s", str(int(self.speed)),
                "-p", str(self.pitch), "-w", str(out), str(self.label),
            ]  # fmt: skip
        return [
            "flite", "-voice", self.voice.arg, "--setf", f"duration_stretch={self.speed:.2f}",
            "-t", ENGLISH_WORDS[self.label], "-o", str(out),
        ]  # fmt: skip


def prepare_avdigits(
    root: Path, *, small: bool = False, seed: int = 0, progress: bool = True
) -> dict:
    """Builds AV-Digits into `root/avdigits` (atomically) and returns its info dict."""
    started = time.perf_counter()
    log = print if progress else _quiet
    _require_tools()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scale = SMALL if small else FULL

    images, labels = _load_images()
    pools = _split_images(labels, rng)
    log(f"{NAME}: {len(labels)} images -> " + ", ".join(f"{k} {len(v)}" for k, v in pools.items()))
    voices = _split_voices(_espeak_voices(), scale, rng)
    clips = {split: _clips(split_voices, scale, rng) for split, split_voices in voices.items()}
    audio, skipped = _synthesise(clips, log)
    human = _human_clips()
    log(
        f"{NAME}: {len(human)} human clips from {ASTERISK_SOUNDS}"
        if human
        else _missing_split()["missing"]
    )

    build_dir = Path(tempfile.mkdtemp(prefix=f".{NAME}-build-", dir=root))
    build_dir.chmod(0o755)  # mkdtemp's 0o700 would otherwise stick to the final dir
    try:
        splits = {}
        for split in ("train", "val", "test"):
            records = _records(audio[split], images, labels, pools[split], 1, rng)
            splits[split] = _write_split(records, build_dir, split)
        if human:
            records = _records(human, images, labels, pools["test"], HUMAN_IMAGES_PER_CLIP, rng)
            splits["test_human"] = _write_split(records, build_dir, "test_human")
        else:
            splits["test_human"] = _missing_split()
        info = _info(splits, skipped, seed, small, time.perf_counter() - started)
        (build_dir / "info.json").write_text(json.dumps(info, indent=2))
        _move_into_place(build_dir, root / NAME)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    log(f"{NAME}: " + ", ".join(f"{k} {v['num_records']}" for k, v in splits.items()))
    log(f"{NAME}: built {root / NAME} in {info['build_seconds']:.1f} s")
    return info


def load_info(root: Path) -> dict:
    """Reads `root/avdigits/info.json`; DataError says how to build it when missing."""
    path = Path(root) / NAME / "info.json"
    if not path.is_file():
        raise DataError(
            f"AV-Digits is not built: {path} is missing. Build it with "
            f"`mmjax data prepare {NAME}` (sources: `{APT_ALL}` and `{PIP_SKLEARN}`)"
        )
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{path}: unreadable ({e}); rebuild with `mmjax data prepare {NAME}`"
        ) from None
    if not isinstance(info, dict) or set(SPLITS) - set(info.get("splits", {})):
        raise DataError(
            f"{path}: expected splits {SPLITS}; rebuild with `mmjax data prepare {NAME}`"
        )
    return info


def shard_paths(root: Path, split: str) -> list[Path]:
    """The shard files of one split, in order; DataError if the split was not built."""
    if split not in SPLITS:
        raise DataError(f"split: expected one of {SPLITS}, got {split!r}")
    entry = load_info(root)["splits"][split]
    if "missing" in entry:
        raise DataError(f"AV-Digits split {split!r} was not built: {entry['missing']}")
    paths = [Path(root) / NAME / shard["file"] for shard in entry["shards"]]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path} is missing; rebuild with `mmjax data prepare {NAME}`")
    return paths


def verify_checksums(root: Path) -> None:
    """Checks every shard's sha256 against info.json; DataError names the first bad shard."""
    for split, entry in load_info(root)["splits"].items():
        if "missing" in entry:
            continue
        for path, shard in zip(shard_paths(root, split), entry["shards"], strict=True):
            if sha256_file(path) != shard["sha256"]:
                raise DataError(
                    f"{path}: sha256 differs from info.json's {shard['sha256']}; the shard is "
                    f"corrupt, rebuild with `mmjax data prepare {NAME}`"
                )


def _quiet(*_args: object) -> None:
    pass


def _require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    if missing:
        raise DataError(f"AV-Digits needs {' and '.join(missing)} on PATH: `{APT_TTS}`")
    if importlib.util.find_spec("sklearn") is None:
        raise DataError(f"AV-Digits needs scikit-learn's digit images: `{PIP_SKLEARN}`")


def _load_images() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits (0..16) -> uint8 images [N,8,8,1] scaled to 0..255, labels [N]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.int64)


def _split_images(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Stratified, disjoint index pools per split (70/10/20)."""
    pools: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for digit in range(NUM_CLASSES):
        for split, part in _cut(rng.permutation(np.flatnonzero(labels == digit))).items():
            pools[split].append(part)
    return {split: np.sort(np.concatenate(parts)) for split, parts in pools.items()}


def _cut(items: np.ndarray) -> dict[str, np.ndarray]:
    """Cuts a shuffled sequence into train/val/test; val and test get >= 1 when n >= 3."""
    n = len(items)
    n_val, n_test = (
        max(1, round(n * SPLIT_FRACTIONS[s])) if n >= 3 else 0 for s in ("val", "test")
    )
    n_train = n - n_val - n_test
    return {
        "train": items[:n_train],
        "val": items[n_train : n_train + n_val],
        "test": items[n_train + n_val :],
    }


def _espeak_voices() -> dict[str, list[Voice]]:
    """Every installed (espeak voice, variant) pair per language, mbrola voices excluded."""
    variants = sorted(
        row[4][3:] for row in _voice_table("--voices=variant") if row[4].startswith("!v/")
    )
    by_language: dict[str, list[Voice]] = {lang: [] for lang in LANGUAGES}
    for row in _voice_table("--voices"):
        code, file = row[1], row[4]
        lang = code.split("-")[0]
        if lang in by_language and not file.startswith(("mb/", "!v/")):
            by_language[lang] += [
                Voice("espeak", f"{code}+{variant}", f"{file}+{variant}", lang)
                for variant in variants
            ]
    return {lang: sorted(voices, key=lambda v: v.id) for lang, voices in by_language.items()}


def _voice_table(flag: str) -> list[list[str]]:
    """Rows of `espeak-ng --voices...`: Pty, Language, Age/Gender, VoiceName, File, ..."""
    lines = _run(["espeak-ng", flag]).splitlines()[1:]
    return [row for row in (line.split() for line in lines) if len(row) >= 5]


def _split_voices(
    espeak: dict[str, list[Voice]], scale: Scale, rng: np.random.Generator
) -> dict[str, list[Voice]]:
    """Voice-disjoint train/val/test; each language (and flite) is cut separately."""
    groups = [voices for voices in espeak.values() if voices]
    if len(groups) < len(LANGUAGES):
        missing = sorted(lang for lang, voices in espeak.items() if not voices)
        raise DataError(f"espeak-ng has no voice for {missing}; reinstall with `{APT_TTS}`")
    groups = [
        [g[i] for i in rng.permutation(len(g))[: scale.espeak_voices_per_language]] for g in groups
    ]
    flite = [Voice("flite", name, name, "en") for name in FLITE_VOICES]
    groups.append([flite[i] for i in rng.permutation(len(flite))])
    splits: dict[str, list[Voice]] = {"train": [], "val": [], "test": []}
    for group in groups:
        for split, part in _cut(np.arange(len(group))).items():
            splits[split] += [group[i] for i in part]
    return splits


def _clips(voices: list[Voice], scale: Scale, rng: np.random.Generator) -> list[Clip]:
    """Every digit once per espeak voice (random speed/pitch), flite_takes times per flite."""
    clips = []
    for voice in voices:
        for label in range(NUM_CLASSES):
            if voice.tool == "espeak":
                speed = rng.integers(ESPEAK_SPEED[0], ESPEAK_SPEED[1] + 1)
                pitch = rng.integers(ESPEAK_PITCH[0], ESPEAK_PITCH[1] + 1)
                clips.append(Clip(voice, label, speed, pitch))
            else:
                stretches = rng.choice(
                    np.arange(FLITE_STRETCH[0], FLITE_STRETCH[1] + 1),
                    scale.flite_takes,
                    replace=False,
                )
                clips += [Clip(voice, label, stretch / 100, 0) for stretch in stretches]
    return clips


def _synthesise(
    clips: dict[str, list[Clip]], log
) -> tuple[dict[str, list[tuple[str, int, np.ndarray]]], list[str]]:
    """Runs the TTS tools on a small thread pool -> per split (voice id, label, int16 [8000]).

    Returns the clips that failed (tool error or silence) separately, as "voice/label".
    """
    everything = [clip for split_clips in clips.values() for clip in split_clips]
    workers = max(2, min(4, os.cpu_count() or 2))
    log(f"{NAME}: synthesising {len(everything)} clips with espeak-ng/flite on {workers} threads")
    with (
        tempfile.TemporaryDirectory(prefix=f"{NAME}-tts-") as tmp,
        ThreadPoolExecutor(workers) as pool,
    ):
        paths = [Path(tmp) / f"{i}.wav" for i in range(len(everything))]
        waves = dict(zip(everything, pool.map(_render, everything, paths), strict=True))
    audio = {
        split: [(c.voice.id, c.label, waves[c]) for c in split_clips if waves[c] is not None]
        for split, split_clips in clips.items()
    }
    skipped = [f"{c.voice.id}/{c.label}" for c in everything if waves[c] is None]
    return audio, skipped


def _render(clip: Clip, out: Path) -> np.ndarray | None:
    """One TTS clip -> int16 [8000], or None when the tool fails or speaks silence."""
    result = subprocess.run(clip.command(out), capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        return None
    try:
        return _to_int16(*read_wav(out))
    except InputError:
        return None
    finally:
        out.unlink(missing_ok=True)


def _to_int16(wave: np.ndarray, sr: int) -> np.ndarray | None:
    prepared = prepare_waveform(wave, sr, sample_rate=SAMPLE_RATE, length=NUM_SAMPLES)
    if not prepared.any():
        return None
    return np.round(prepared * 32767).astype(np.int16)


def _human_dirs() -> dict[str, Path]:
    """Installed Asterisk prompt dirs with digits 0..9, one per real dir (shortest alias)."""
    if not ASTERISK_SOUNDS.is_dir():
        return {}
    by_target: dict[str, list[Path]] = {}
    for path in sorted(ASTERISK_SOUNDS.iterdir()):
        digits = path / "digits"
        if all((digits / f"{d}.wav").is_file() for d in range(NUM_CLASSES)):
            by_target.setdefault(os.path.realpath(path), []).append(path)
    chosen = (min(aliases, key=lambda p: (len(p.name), p.name)) for aliases in by_target.values())
    return {path.name: path / "digits" for path in sorted(chosen)}


def _human_clips() -> list[tuple[str, int, np.ndarray]]:
    """(voice id "human:<lang>", label, int16 [8000]) for every installed language."""
    clips = []
    for lang, digits in _human_dirs().items():
        for label in range(NUM_CLASSES):
            wave = _to_int16(*read_wav(digits / f"{label}.wav"))
            if wave is not None:
                clips.append((f"human:{lang}", label, wave))
    return clips


def _records(
    audio: list[tuple[str, int, np.ndarray]],
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    images_per_clip: int,
    rng: np.random.Generator,
) -> list[dict[str, np.ndarray]]:
    """Pairs each clip with `images_per_clip` distinct pool images of its label, shuffled.

    Each label's images are drawn by cycling through a shuffled list, so they are used evenly.
    """
    cycles = {d: _cycle(rng.permutation(pool[labels[pool] == d])) for d in range(NUM_CLASSES)}
    records = [
        {
            "image": images[next(cycles[label])],
            "audio": wave,
            "label": np.array(label, np.int64),
            "voice": np.array(voice),
        }
        for voice, label, wave in audio
        for _ in range(images_per_clip)
    ]
    return [records[i] for i in rng.permutation(len(records))]


def _cycle(items: np.ndarray) -> Iterator[int]:
    if len(items) == 0:
        raise DataError("an image pool has no image of some digit; expected all 10 digits")
    return itertools.cycle(items.tolist())


def _write_split(records: list[dict], directory: Path, split: str) -> dict:
    shards = write_shards(records, directory, split, TRAIN_SHARDS if split == "train" else 1)
    voices = sorted({str(record["voice"]) for record in records})
    return {"num_records": len(records), "voices": voices, "shards": shards}


def _missing_split() -> dict:
    return {
        "num_records": 0,
        "voices": [],
        "shards": [],
        "missing": f"no human recordings under {ASTERISK_SOUNDS}; install them: `{APT_HUMAN}`",
    }


def _info(splits: dict, skipped: list[str], seed: int, small: bool, seconds: float) -> dict:
    return {
        "name": NAME,
        "version": VERSION,
        "num_classes": NUM_CLASSES,
        "modalities": {
            "image": {"shape": [8, 8, 1], "dtype": "uint8"},
            "audio": {"shape": [NUM_SAMPLES], "dtype": "int16", "sample_rate": SAMPLE_RATE},
        },
        "splits": splits,
        "sources": _sources(),
        "skipped_clips": skipped,
        "seed": seed,
        "small": small,
        "build_seconds": round(seconds, 2),
    }


def _sources() -> dict:
    import sklearn

    packages = {}
    for package in ASTERISK_PACKAGES:
        version = _last_line(["dpkg-query", "-W", "-f", "${Version}", package])
        if version:
            packages[package] = version
    return {
        "espeak-ng": _last_line(["espeak-ng", "--version"]),
        "flite": _last_line(["flite", "--version"]),
        "scikit-learn": f"{sklearn.__version__} (sklearn.datasets.load_digits)",
        "asterisk": packages,
    }


def _run(argv: list[str]) -> str:
    """stdout of a short command; DataError when it fails."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise DataError(f"`{' '.join(argv)}` failed ({e}); reinstall with `{APT_TTS}`") from None


def _last_line(argv: list[str]) -> str:
    """Last stdout line of a version query whatever its exit status (flite --version exits 1)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = out.strip().splitlines()
    return lines[-1].strip() if lines else ""


def _move_into_place(build_dir: Path, final: Path) -> None:
    """Renames the finished build over `final`; an old build is deleted only afterwards."""
    old = Path(tempfile.mkdtemp(prefix=f".{NAME}-old-", dir=final.parent))
    if final.exists():
        final.rename(old / final.name)
    build_dir.rename(final)
    shutil.rmtree(old)


DATASETS.register(NAME)(
    Dataset(
        prepare=prepare_avdigits,
        load_info=load_info,
        shard_paths=shard_paths,
        verify=verify_checksums,
    )
)
