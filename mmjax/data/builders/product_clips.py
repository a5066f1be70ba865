"""Product clips: a video's product category from its frames, its voice-over and its title.

The three-modality task mmjax exists for, built from real material and imported through
`mmjax data import`'s manifest route, the same code a user's clips go through:

* **frames**: one MP4 per example (H.264, 8 frames at 4 fps, 32x32): a real Fashion-MNIST
  photo (`dataset-fashion-mnist`; train and val clips from its training images, test clips
  from its test images, each photo used once) tinted, zooming and panning over a coloured
  canvas, crossed by an occluding bar, with pixel noise (`clip_media.py`);
* **voice-over**: the clip's AAC track (8 kHz), espeak-ng or flite saying which collection
  the product belongs to, in English, French or Spanish, mixed with noise. Accents and
  speaker variants are cut into disjoint train/val/test groups as in AV-Digits
  (`voices.py`), so val and test voices are never heard in training;
* **title**: a manifest column of words drawn from WordNet (`wordnet-base`): the lemmas,
  hypernyms and gloss words of the product's *coarse group* (tops, garments, footwear,
  bags), shuffled with distractor adjectives;
* **label**: Fashion-MNIST's 10 classes, balanced in every split.

Each modality is partial, so only fusion can be right about every class. The title names
only the group; the collection is shared by classes of different groups, and within each
group every class has its own collection, so title + voice-over name the class:

| group | classes (collection) |
|---|---|
| tops | T-shirt (summer), pullover (weekend), coat (winter), shirt (office) |
| garments | trouser (summer), dress (weekend) |
| footwear | sandal (summer), sneaker (weekend), ankle boot (winter) |
| bags | bag (summer) |

The frames tell the groups apart but confuse T-shirt, pullover, coat and shirt (as
Fashion-MNIST does). Some titles are empty and some clips have no audio track (missing
modalities, stored masked). Title alone and voice-over alone are at most 0.4 accurate by
construction; the measured accuracies are in info.json's "measured" and in
docs/results/product_clips.md.

Layout: `root/product-clips-files/` (clips/<split>/<n>.mp4 and manifest.csv, kept for
`mmjax predict --video`), and `root/product-clips/`, the imported dataset (info.json with
this builder's "version", "build" settings, "sources" and "measured" added).
"""

import csv
import dataclasses
import gzip
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mmjax.data.audio_io import read_wav
from mmjax.data.builders import wordnet
from mmjax.data.builders.built import Built, building
from mmjax.data.builders.clip_media import Motion, render_frames, write_clip
from mmjax.data.builders.voices import (
    FLITE_VOICES,
    TTS_SPLITS,
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
from mmjax.data.media import fit_waveform, to_int16
from mmjax.errors import DataError, InputError
from mmjax.pretrained.catalog import entry, package_dir
from mmjax.pretrained.word_vectors import write_word_vectors
from mmjax.progress import progress_log

NAME = "product-clips"
FILES = f"{NAME}-files"
VERSION = "1.0.0"
SPLITS = TTS_SPLITS
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
APT_FASHION_MNIST = "apt-get install dataset-fashion-mnist"
CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)  # fmt: skip  (Fashion-MNIST's label order)
GROUPS = ("tops", "garments", "footwear", "bags")
GROUP_OF = (0, 1, 0, 1, 0, 2, 0, 2, 3, 2)  # class -> coarse group (the title's information)
COLLECTIONS = ("summer", "weekend", "winter", "office")
COLLECTION_OF = (0, 0, 1, 1, 2, 0, 3, 1, 0, 2)  # class -> collection (the voice-over's)
# WordNet 3.0 noun synsets (byte offset, a lemma to check) whose words make each group's titles.
GROUP_SYNSETS = (
    ((4453666, "top"),),  # a garment that extends from the shoulders to the waist or hips
    ((3419014, "garment"),),  # an article of clothing
    ((3381126, "footwear"), (3380867, "footwear")),  # clothing / covering for a person's feet
    ((2774152, "handbag"),),  # a container used for carrying money and small personal items
)
LANGUAGES = ("en", "fr", "es")
SPOKEN = {  # the collection's name per language; flite speaks the English
    "en": ("summer", "weekend", "winter", "office"),
    "fr": ("été", "week-end", "hiver", "bureau"),
    "es": ("verano", "fin de semana", "invierno", "oficina"),
}
VOCAB_SIZE = 2048  # the title vocabulary's cap (a full build has about 500 words)
WORD_VECTORS = "word_vectors.minilm-l6.txt"  # GloVe-format vectors of the vocabulary's words
WORD_VECTOR_DIM = 384  # MiniLM-L6's token embeddings
ESPEAK_SPEED = (130, 190)  # words per minute
ESPEAK_PITCH = (25, 75)
FLITE_STRETCH = (0.85, 1.25)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a build depends on besides the seed; recorded in info.json's "build"."""

    clips: dict[str, int]  # per split, a multiple of the 10 classes
    motion: Motion
    fps: int = 4
    sample_rate: int = 8000  # of the AAC track and of the imported audio
    audio_seconds: float = 1.5
    snr_db: tuple[float, float] = (15.0, 35.0)  # voice-over to background noise
    title_missing: float = 0.05  # share of clips with an empty title
    audio_missing: float = 0.05  # share of clips written without an audio track
    title_words: tuple[int, int] = (2, 4)  # words drawn from the group's WordNet words
    distractors: tuple[int, int] = (1, 3)  # adjectives added to a title
    distractor_pool: int = 400
    text_length: int = 12


MOTION = Motion(size=32, frames=8, scale=(0.6, 0.9), occluder=(0.15, 0.3), noise=0.06)
FULL = Settings(clips={"train": 3000, "val": 500, "test": 1000}, motion=MOTION)
SMALL = dataclasses.replace(FULL, clips={"train": 40, "val": 10, "test": 20})
# Test accuracy on a full build of this version, mean over seeds 0-2 of 500 steps, measured by
# tools/product_clips_results.py, under its model names (docs/results/product_clips.md has
# every model and setting): `*_pretrained_frames` on frozen ImageNet EfficientNet-Lite0 frame
# features cached once, the others with `small_cnn` trained on every frame.
MEASURED: dict[str, object] = {
    "steps": 500,
    "seeds": [0, 1, 2],
    "test_accuracy": {
        "mbt_pretrained_frames": 0.937,
        "late_concat_pretrained_frames": 0.915,
        "late_concat": 0.886,
        "frames_only_pretrained": 0.469,
        "frames_only": 0.312,
        "voice_only": 0.366,
        "title_only": 0.351,
    },
}


@dataclasses.dataclass(frozen=True)
class Clip:
    """One example to write: its photo, label, voice and how the voice-over is spoken."""

    split: str
    index: int
    photo: int  # index into the split's Fashion-MNIST file (train or t10k)
    label: int
    voice: Voice
    speed: float  # espeak: words per minute; flite: duration stretch
    pitch: int
    title: str
    has_audio: bool

    @property
    def file(self) -> str:
        return f"clips/{self.split}/{self.index:05d}.mp4"

    def command(self, out: Path) -> list[str]:
        text = SPOKEN[self.voice.language][COLLECTION_OF[self.label]]
        if self.voice.tool == "espeak":
            return [
                "espeak-ng", "-v", self.voice.arg, "-s", str(int(self.speed)),
                "-p", str(self.pitch), "-w", str(out), text,
            ]  # fmt: skip
        return [
            "flite", "-voice", self.voice.arg, "--setf",
            f"duration_stretch={self.speed:.2f}", "-t", text, "-o", str(out),
        ]  # fmt: skip


def prepare_product_clips(
    root: Path, *, small: bool = False, seed: int = 0, progress: bool = True
) -> dict:
    """Writes the clips and their manifest into `root/product-clips-files`, imports them as
    `root/product-clips` (both atomically) and returns the dataset's info."""
    from mmjax.data.imports.build import ImportOptions, import_table
    from mmjax.data.imports.manifest import manifest_table

    started = time.perf_counter()
    log = progress_log(progress)
    require_tts("Product clips")
    package_dir(entry("minilm-l6"))  # the title word vectors' source, checked before any work
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings = SMALL if small else FULL
    rng = np.random.default_rng(seed)
    photos = {"train": _load_fashion_mnist("train"), "test": _load_fashion_mnist("t10k")}
    picks = _pick_photos(photos, settings.clips, rng)
    titles = _title_words(rng, settings.distractor_pool)
    voices = _split_voices(rng)
    clips = _plan(picks, voices, titles, settings, rng)
    log(f"{NAME}: writing {len(clips)} clips (voice-over, frames, MP4) into {root / FILES}")
    with building(root / FILES) as files_dir:
        skipped = _write_clips(clips, photos, settings, files_dir, seed)
        manifest = _write_manifest(clips, files_dir)
    written = time.perf_counter() - started
    log(f"{NAME}: clips written in {written:.1f} s; importing them")
    read = manifest_table(root / FILES / manifest, mapping={"video": "video", "text": "title"})
    table = dataclasses.replace(read, class_names=list(CLASSES))
    options = ImportOptions(
        image_size=settings.motion.size,
        sample_rate=settings.sample_rate,
        audio_seconds=settings.audio_seconds,
        frames=settings.motion.frames,
        text_length=settings.text_length,
        vocab_size=VOCAB_SIZE,
        val=0.0,
        test=0.0,
        seed=seed,
        workers=min(2, os.cpu_count() or 1),
    )
    extra = {
        "version": VERSION,
        "build": _settings_json(settings) | {"seed": seed, "small": small},
        "notes": _notes(voices),
        "voices": {s: sorted({c.voice.id for c in clips if c.split == s}) for s in SPLITS},
        "skipped_voice_overs": skipped,
        "sources": _sources(),
        "files": FILES,
        "measured": MEASURED,
        "write_seconds": round(written, 2),
    }
    info = import_table(NAME, table, options, root, overwrite=True, progress=progress, extra=extra)
    vocab = (root / NAME / info["text_vocab"]["file"]).read_text(encoding="utf-8").splitlines()
    write_word_vectors(vocab, root / NAME / WORD_VECTORS, "minilm-l6")
    log(f"{NAME}: built {root / NAME} in {time.perf_counter() - started:.1f} s")
    return info


def _load_fashion_mnist(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the `train` or `t10k` idx files."""
    try:
        with gzip.open(FASHION_MNIST / f"{kind}-images-idx3-ubyte.gz") as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_MNIST / f"{kind}-labels-idx1-ubyte.gz") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    except (OSError, ValueError) as err:
        raise DataError(
            f"Fashion-MNIST is not readable under {FASHION_MNIST} ({err}): `{APT_FASHION_MNIST}`"
        ) from None
    if len(images) != len(labels):
        raise DataError(f"{FASHION_MNIST}/{kind}: images and labels differ in number")
    return images, labels


def _pick_photos(
    photos: dict[str, tuple[np.ndarray, np.ndarray]],
    clips: dict[str, int],
    rng: np.random.Generator,
) -> dict[str, list[tuple[int, int]]]:
    """Per split, (photo index, label) pairs: clips[split] / 10 distinct photos of each class;
    train and val draw disjoint photos from the training file, test from the test file."""
    picks: dict[str, list[tuple[int, int]]] = {}
    taken: dict[int, np.ndarray] = {}
    for split in SPLITS:
        source = "test" if split == "test" else "train"
        labels = photos[source][1]
        per_class = clips[split] // len(CLASSES)
        picks[split] = []
        for label in range(len(CLASSES)):
            pool = np.flatnonzero(labels == label)
            if source == "train":
                pool = np.setdiff1d(pool, taken.get(label, np.array([], int)))
            chosen = np.sort(rng.choice(pool, per_class, replace=False))
            if source == "train":
                taken[label] = np.concatenate([taken.get(label, np.array([], int)), chosen])
            picks[split] += [(int(i), label) for i in chosen]
    return picks


def _title_words(rng: np.random.Generator, pool: int) -> tuple[list[list[str]], list[str]]:
    """(each group's WordNet words, distractor adjectives)."""
    groups = []
    for synsets in GROUP_SYNSETS:
        words = [
            w for offset, lemma in synsets for w in wordnet.synset_words("noun", offset, lemma)
        ]
        groups.append(list(dict.fromkeys(words)))
    return groups, wordnet.adjectives(pool, rng, (4, 9))


def _split_voices(rng: np.random.Generator) -> dict[str, list[Voice]]:
    """Per split, every espeak voice (its accents x its variants, per language) and its part
    of the flite voices (cut 2/1/1); no accent, variant or flite voice is in two splits."""
    accents = split_accents(espeak_accents(LANGUAGES), rng)
    variants = split_variants(espeak_variants(), rng)
    flite = [Voice("flite", name, name, "en") for name in FLITE_VOICES]
    flite_parts = cut(rng.permutation(len(flite)))
    voices = {}
    for split in SPLITS:
        voices[split] = [
            Voice("espeak", f"{accent.code}+{variant}", f"{accent.file}+{variant}", lang)
            for lang, split_accents_ in sorted(accents[split].items())
            for accent in split_accents_
            for variant in variants[split]
        ] + [flite[i] for i in flite_parts[split]]
    return voices


def _plan(
    picks: dict[str, list[tuple[int, int]]],
    voices: dict[str, list[Voice]],
    titles: tuple[list[list[str]], list[str]],
    settings: Settings,
    rng: np.random.Generator,
) -> list[Clip]:
    """Every clip of every split, in a shuffled order within each split."""
    group_words, distractors = titles
    clips = []
    for split in SPLITS:
        # A language, then one of its voices: English has most accents but no more clips.
        by_language: dict[str, list[Voice]] = {}
        for voice in voices[split]:
            by_language.setdefault(voice.language, []).append(voice)
        languages = sorted(by_language)
        for index, i in enumerate(rng.permutation(len(picks[split]))):
            photo, label = picks[split][i]
            options = by_language[languages[rng.integers(len(languages))]]
            voice = options[rng.integers(len(options))]
            if voice.tool == "espeak":
                speed, pitch = float(rng.integers(*ESPEAK_SPEED)), int(rng.integers(*ESPEAK_PITCH))
            else:
                speed, pitch = float(rng.uniform(*FLITE_STRETCH)), 0
            title = _title(group_words[GROUP_OF[label]], distractors, settings, rng)
            has_audio = bool(rng.random() >= settings.audio_missing)
            clips.append(Clip(split, index, photo, label, voice, speed, pitch, title, has_audio))
    return clips


def _title(
    words: list[str], distractors: list[str], settings: Settings, rng: np.random.Generator
) -> str:
    """A few of the group's words and some distractors, shuffled; "" for a missing title."""
    if rng.random() < settings.title_missing:
        return ""
    n_words = rng.integers(settings.title_words[0], settings.title_words[1] + 1)
    n_other = rng.integers(settings.distractors[0], settings.distractors[1] + 1)
    chosen = [words[i] for i in rng.choice(len(words), n_words, replace=False)]
    chosen += [distractors[i] for i in rng.choice(len(distractors), n_other, replace=False)]
    return " ".join(chosen[i] for i in rng.permutation(len(chosen)))


def _write_clips(
    clips: list[Clip],
    photos: dict[str, tuple[np.ndarray, np.ndarray]],
    settings: Settings,
    files_dir: Path,
    seed: int,
) -> list[str]:
    """Renders and writes every clip on a small thread pool (the TTS tools and the encoders
    run outside the GIL); returns the clips whose voice-over failed (written without audio)."""
    for split in SPLITS:
        (files_dir / "clips" / split).mkdir(parents=True)
    workers = max(2, min(4, os.cpu_count() or 2))
    with (
        tempfile.TemporaryDirectory(prefix=f"{NAME}-tts-") as tmp,
        ThreadPoolExecutor(workers) as pool,
    ):
        jobs = [(clip, photos, settings, files_dir, Path(tmp), seed) for clip in clips]
        results = list(pool.map(_write_one, jobs))
    return [clip.file for clip, ok in zip(clips, results, strict=True) if not ok]


def _write_one(job: tuple) -> bool:
    """One clip: its own random stream (seeded by the build seed and its place), frames, the
    voice-over mixed with noise at a drawn SNR, the MP4. False when the TTS tool failed."""
    clip, photos, settings, files_dir, tmp, seed = job
    rng = np.random.default_rng([seed, SPLITS.index(clip.split), clip.index])
    source = "test" if clip.split == "test" else "train"
    frames = render_frames(photos[source][0][clip.photo], settings.motion, rng)
    audio, ok = None, True
    if clip.has_audio:
        audio = _voice_over(clip, settings, tmp, rng)
        ok = audio is not None
    write_clip(files_dir / clip.file, frames, settings.fps, audio, settings.sample_rate)
    return ok


def _voice_over(
    clip: Clip, settings: Settings, tmp: Path, rng: np.random.Generator
) -> np.ndarray | None:
    """The spoken collection at the track's rate and length, noise added: int16 [N]."""
    out = tmp / f"{clip.split}-{clip.index}.wav"
    result = subprocess.run(clip.command(out), capture_output=True, timeout=60, check=False)
    try:
        if result.returncode != 0:
            return None
        wave, rate = read_wav(out)
    except InputError:
        return None
    finally:
        out.unlink(missing_ok=True)
    length = round(settings.audio_seconds * settings.sample_rate)
    speech = fit_waveform(wave, rate, settings.sample_rate, length)
    power = float(np.mean(speech**2))
    if power == 0:
        return None
    snr = rng.uniform(*settings.snr_db)
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr / 10)), length)
    mixed = speech + noise
    return to_int16(mixed / max(1.0, float(np.abs(mixed).max())))


def _write_manifest(clips: list[Clip], files_dir: Path) -> str:
    """manifest.csv: video (relative path), title, label (class name), split."""
    name = "manifest.csv"
    with (files_dir / name).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "title", "label", "split"])
        for clip in clips:
            writer.writerow([clip.file, clip.title, CLASSES[clip.label], clip.split])
    return name


def _settings_json(settings: Settings) -> dict:
    return dataclasses.asdict(settings) | {
        "groups": {
            g: [CLASSES[c] for c in range(10) if GROUP_OF[c] == k] for k, g in enumerate(GROUPS)
        },
        "collections": {
            c: [CLASSES[k] for k in range(10) if COLLECTION_OF[k] == j]
            for j, c in enumerate(COLLECTIONS)
        },
        "spoken": SPOKEN,
    }


def _notes(voices: dict[str, list[Voice]]) -> list[str]:
    counts = ", ".join(f"{s} {len(v)}" for s, v in voices.items())
    return [
        "espeak accents (per language) and variants (speaker timbres) are cut into disjoint "
        "train/val/test groups and the 4 flite voices 2/1/1, so held-out splits speak with "
        f"voices never heard in training; voices per split: {counts}.",
        "Train and val clips show disjoint Fashion-MNIST training photos; test clips show "
        "its test photos. Every photo appears in one clip.",
        "The title names only the coarse group and the voice-over only the collection; "
        "title + voice-over name the class, the frames confuse T-shirt, pullover, coat and "
        "shirt.",
    ]


def _sources() -> dict:
    fmnist = last_line(["dpkg-query", "-W", "-f", "${Version}", "dataset-fashion-mnist"])
    return tts_versions() | {
        "dataset-fashion-mnist": fmnist,
        "wordnet-base": wordnet.version(),
        "pyav": __import__("av").__version__,
    }


BUILT = Built(
    NAME,
    "Product clips",
    VERSION,
    SPLITS,
    sources="`apt-get install espeak-ng flite dataset-fashion-mnist wordnet-base`",
)
BUILT.register(prepare_product_clips)
