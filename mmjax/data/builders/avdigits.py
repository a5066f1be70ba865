"""AV-Digits: a handwritten digit image paired with a spoken digit (like AV-MNIST).

Images are scikit-learn's 1,797 real 8x8 digits, cut 70/10/20 per digit into disjoint
train/val/test pools. TTS audio is synthesised offline with espeak-ng (en, fr, es, it, ru)
and flite (English). An espeak voice is an accent (a base voice: `en-gb-x-gbclan`,
`fr-be`, `es-419`, ...) plus a variant (a speaker timbre: `m3`, `klatt5`, ...). Accents
(per language) and variants (per gender) are each cut into disjoint train/val/test groups,
and a clip of split s pairs an accent and a variant of s's groups, so val and test never
reuse an accent or a timbre heard in training. The four flite voices (English speakers)
are cut 2/1/1. An accent cut gives test one accent of every language with >= 2 installed
accents and val one of every language with >= 3, so with espeak-ng 1.51's voices:

* en (8 accents): train 5, val 1, test 2; fr (3): 1/1/1; es and ru (2): 1/0/1;
* it has a single accent (`it`), so Italian TTS is train-only: val and test have no
  Italian, val speaks English and French only, and `test_human` still has Italian.

info.json says this in its "notes" and lists each split's voices, accents and variants.
`test_human` holds real 8 kHz recordings (Asterisk prompts) in the same languages, to
measure TTS -> human transfer. Every clip goes through `prepare_waveform`, the same
preprocessing `mmjax predict` applies to user files.

Layout: `root/avdigits/info.json` plus `{split}.array_record-*` shards of npz records
{"image": uint8 [8,8,1], "audio": int16 [8000], "label": int64 [], "voice": str []}.
"""

import importlib.util
import itertools
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmjax.data.audio_io import prepare_waveform, read_wav
from mmjax.data.builders.built import Built, building, write_info
from mmjax.data.builders.voices import (
    APT_TTS,
    FLITE_VOICES,
    TTS_SPLITS,
    Accent,
    Voice,
    cut,
    espeak_accents,
    espeak_variants,
    last_line,
    require_tts,
    split_accents,
    split_variants,
    tts_versions,
)
from mmjax.data.records import write_shards
from mmjax.errors import DataError, InputError
from mmjax.progress import progress_log

NAME = "avdigits"
VERSION = "1.1.0"
SPLITS = ("train", "val", "test", "test_human")
NUM_CLASSES = 10
SAMPLE_RATE = 8000
NUM_SAMPLES = 8000
LANGUAGES = ("en", "fr", "es", "it", "ru")
LANGUAGE_NAMES = dict(en="English", fr="French", es="Spanish", it="Italian", ru="Russian")
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds")
ASTERISK_PACKAGES = tuple(f"asterisk-core-sounds-{lang}-wav" for lang in LANGUAGES)
APT_HUMAN = "apt-get install " + " ".join(ASTERISK_PACKAGES)
APT_ALL = f"{APT_TTS} {' '.join(ASTERISK_PACKAGES)}"
PIP_SKLEARN = "pip install scikit-learn"
ENGLISH_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HUMAN_IMAGES_PER_CLIP = 4
ESPEAK_SPEED = (90, 180)  # words per minute; the human prompts are slower than the default 175
ESPEAK_PITCH = (25, 75)  # 0..99
FLITE_STRETCH = (80, 130)  # duration stretch in percent
TRAIN_SHARDS = 2


@dataclass(frozen=True)
class Scale:
    """(accent, variant) pairs per language drawn for each split (fewer if fewer exist)."""

    train_pairs: int
    val_pairs: int
    test_pairs: int
    flite_takes: int  # renditions per (flite voice, digit) at different speeds

    def pairs(self, split: str) -> int:
        return getattr(self, f"{split}_pairs")


# full, espeak-ng 1.51: train 5 x 50 pairs, val en+fr x 10 (all there are: 1 accent x 10
# variants each), test 4 x 17; x 10 digits, plus 10 x 5 flite takes per flite voice.
FULL = Scale(train_pairs=50, val_pairs=10, test_pairs=17, flite_takes=5)
SMALL = Scale(train_pairs=3, val_pairs=1, test_pairs=1, flite_takes=1)


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
    log = progress_log(progress)
    _require_tools()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scale = SMALL if small else FULL

    images, labels = _load_images()
    pools = _split_images(labels, rng)
    log(f"{NAME}: {len(labels)} images -> " + ", ".join(f"{k} {len(v)}" for k, v in pools.items()))
    accents = split_accents(espeak_accents(LANGUAGES), rng)
    variants = split_variants(espeak_variants(), rng)
    voices = _voices(accents, variants, scale, rng)
    clips = {split: _clips(split_voices, scale, rng) for split, split_voices in voices.items()}
    audio, skipped = _synthesise(clips, log)
    human = _human_clips()
    notes = _notes(accents, {voice.split(":")[1] for voice, _, _ in human})
    for note in notes:
        log(f"{NAME}: {note}")
    log(
        f"{NAME}: {len(human)} human clips from {ASTERISK_SOUNDS}"
        if human
        else _missing_split()["missing"]
    )

    with building(root / NAME) as build_dir:
        splits = {}
        for split in ("train", "val", "test"):
            records = _records(audio[split], images, labels, pools[split], 1, rng)
            splits[split] = _write_split(records, build_dir, split)
        if human:
            records = _records(human, images, labels, pools["test"], HUMAN_IMAGES_PER_CLIP, rng)
            splits["test_human"] = _write_split(records, build_dir, "test_human")
        else:
            splits["test_human"] = _missing_split()
        info = _info(splits, notes, skipped, seed, small, time.perf_counter() - started)
        write_info(build_dir, info)
    log(f"{NAME}: " + ", ".join(f"{k} {v['num_records']}" for k, v in splits.items()))
    log(f"{NAME}: built {root / NAME} in {info['build_seconds']:.1f} s")
    return info


def _require_tools() -> None:
    require_tts("AV-Digits")
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
        for split, part in cut(rng.permutation(np.flatnonzero(labels == digit))).items():
            pools[split].append(part)
    return {split: np.sort(np.concatenate(parts)) for split, parts in pools.items()}


def _voices(
    accents: dict[str, dict[str, list[Accent]]],
    variants: dict[str, list[str]],
    scale: Scale,
    rng: np.random.Generator,
) -> dict[str, list[Voice]]:
    """Per split, `scale.pairs(split)` random (accent, variant) pairs per language drawn from
    that split's accents x its variants, plus a 2/1/1 cut of the flite voices."""
    flite = [Voice("flite", name, name, "en") for name in FLITE_VOICES]
    flite_parts = cut(rng.permutation(len(flite)))
    voices: dict[str, list[Voice]] = {}
    for split in TTS_SPLITS:
        voices[split] = []
        for lang, accents_of_split in accents[split].items():
            pairs = list(itertools.product(accents_of_split, variants[split]))
            for i in sorted(rng.permutation(len(pairs))[: scale.pairs(split)]):
                accent, variant = pairs[i]
                voices[split].append(
                    Voice(
                        "espeak",
                        f"{accent.code}+{variant}",
                        f"{accent.file}+{variant}",
                        lang,
                    )
                )
        voices[split] += [flite[i] for i in flite_parts[split]]
    return voices


def _notes(accents: dict[str, dict[str, list[Accent]]], human: set[str]) -> list[str]:
    """What info.json's "notes" say about the accent/variant cut and its missing languages."""
    notes = [
        "espeak accents (base voices, per language) and variants (speaker timbres) are each "
        "cut into disjoint train/val/test groups; a clip of split s pairs an accent and a "
        "variant of s's groups. The 4 flite voices (English speakers) are cut 2/1/1."
    ]
    for lang in LANGUAGES:
        if lang in accents["test"]:
            continue
        name = LANGUAGE_NAMES[lang]
        only = ", ".join(a.code for a in accents["train"][lang])
        human_note = (
            f"test_human still has {name} recordings"
            if lang in human
            else f"test_human would have {name} recordings after "
            f"`apt-get install asterisk-core-sounds-{lang}-wav`"
        )
        notes.append(
            f"{name} has a single installed espeak accent ({only}), which cannot be in both "
            f"train and test, so it is train-only: val and test TTS have no {name}; "
            f"{human_note}."
        )
    val = [LANGUAGE_NAMES[lang] for lang in accents["val"]]
    notes.append(
        "val TTS speaks only languages with >= 3 installed espeak accents: "
        f"{', '.join(val) or 'none'} (plus a flite English voice); test gets one accent of "
        "every language with >= 2."
    )
    return notes


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
    espeak = [v.removeprefix("espeak:").split("+") for v in voices if v.startswith("espeak:")]
    return {
        "num_records": len(records),
        "voices": voices,
        "accents": sorted({accent for accent, _ in espeak}),  # espeak only; flite is in voices
        "variants": sorted({variant for _, variant in espeak}),
        "shards": shards,
    }


def _missing_split() -> dict:
    return {
        "num_records": 0,
        "voices": [],
        "accents": [],
        "variants": [],
        "shards": [],
        "missing": f"no human recordings under {ASTERISK_SOUNDS}; install them: `{APT_HUMAN}`",
    }


def _info(
    splits: dict, notes: list[str], skipped: list[str], seed: int, small: bool, seconds: float
) -> dict:
    return {
        "name": NAME,
        "version": VERSION,
        "num_classes": NUM_CLASSES,
        "modalities": {
            "image": {"shape": [8, 8, 1], "dtype": "uint8"},
            "audio": {"shape": [NUM_SAMPLES], "dtype": "int16", "sample_rate": SAMPLE_RATE},
        },
        "splits": splits,
        "notes": notes,
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
        version = last_line(["dpkg-query", "-W", "-f", "${Version}", package])
        if version:
            packages[package] = version
    return {
        **tts_versions(),
        "scikit-learn": f"{sklearn.__version__} (sklearn.datasets.load_digits)",
        "asterisk": packages,
    }


BUILT = Built(NAME, "AV-Digits", VERSION, SPLITS, sources=f"`{APT_ALL}` and `{PIP_SKLEARN}`")
load_info = BUILT.load_info
shard_paths = BUILT.shard_paths
verify_checksums = BUILT.verify
BUILT.register(prepare_avdigits)
