"""Text-to-speech voices for the built datasets: espeak-ng accents and variants, flite
voices, and their cut into disjoint train/val/test groups, so held-out splits never reuse an
accent or a speaker timbre heard in training.

An espeak voice is an accent (a base voice: `en-gb-x-gbclan`, `fr-be`, `es-419`, ...) plus a
variant (a speaker timbre: `m3`, `klatt5`, ...).
"""

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from mmjax.errors import DataError

APT_TTS = "apt-get install espeak-ng flite"
TTS_SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}  # the rest is train
# kal16 is kal's speaker again and awb_time only speaks clock times.
FLITE_VOICES = ("kal", "awb", "rms", "slt")


@dataclass(frozen=True)
class Accent:
    code: str  # espeak's language code, e.g. "en-gb-x-gbclan"
    file: str  # its voice file, e.g. "gmw/en-GB-x-gbclan"
    language: str


@dataclass(frozen=True)
class Voice:
    tool: str  # "espeak" or "flite"
    name: str  # what a record stores after "tool:", e.g. "fr-fr+m3"
    arg: str  # what the tool's voice flag gets, e.g. "roa/fr+m3"
    language: str

    @property
    def id(self) -> str:
        return f"{self.tool}:{self.name}"


def require_tts(dataset: str) -> None:
    """DataError naming the apt-get line unless espeak-ng and flite are on PATH."""
    missing = [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    if missing:
        raise DataError(f"{dataset} needs {' and '.join(missing)} on PATH: `{APT_TTS}`")


def cut(items: np.ndarray) -> dict[str, np.ndarray]:
    """Cuts a shuffled sequence into train/val/test; test gets >= 1 when n >= 2, val when n >= 3.

    Train always gets >= 1: n = 1 -> 1/0/0, 2 -> 1/0/1, 3 -> 1/1/1, 4 -> 2/1/1, 8 -> 5/1/2.
    """
    n = len(items)
    n_val, n_test = (
        max(1, round(n * SPLIT_FRACTIONS[s])) if n >= least else 0
        for s, least in (("val", 3), ("test", 2))
    )
    n_train = n - n_val - n_test
    return {
        "train": items[:n_train],
        "val": items[n_train : n_train + n_val],
        "test": items[n_train + n_val :],
    }


def espeak_accents(languages: tuple[str, ...]) -> dict[str, list[Accent]]:
    """Installed espeak base voices (accents) per language, sorted; mbrola voices excluded."""
    by_language: dict[str, list[Accent]] = {lang: [] for lang in languages}
    for row in _voice_table("--voices"):
        code, file = row[1], row[4]
        lang = code.split("-")[0]
        if lang in by_language and not file.startswith(("mb/", "!v/")):
            by_language[lang].append(Accent(code, file, lang))
    missing = sorted(lang for lang, accents in by_language.items() if not accents)
    if missing:
        raise DataError(f"espeak-ng has no voice for {missing}; reinstall with `{APT_TTS}`")
    return {lang: sorted(accents, key=lambda a: a.code) for lang, accents in by_language.items()}


def espeak_variants() -> dict[str, list[str]]:
    """Installed espeak variant names (speaker timbres) by gender ("M", "F"), sorted."""
    by_gender: dict[str, list[str]] = {}
    for row in _voice_table("--voices=variant"):
        if row[4].startswith("!v/"):
            by_gender.setdefault(row[2].split("/")[-1], []).append(row[4][3:])
    if sum(map(len, by_gender.values())) < 3:
        raise DataError(
            f"espeak-ng has fewer than 3 voice variants (one each for train, val and test); "
            f"reinstall with `{APT_TTS}`"
        )
    return {gender: sorted(names) for gender, names in sorted(by_gender.items())}


def _voice_table(flag: str) -> list[list[str]]:
    """Rows of `espeak-ng --voices...`: Pty, Language, Age/Gender, VoiceName, File, ..."""
    lines = run(["espeak-ng", flag]).splitlines()[1:]
    return [row for row in (line.split() for line in lines) if len(row) >= 5]


def split_accents(
    accents: dict[str, list[Accent]], rng: np.random.Generator
) -> dict[str, dict[str, list[Accent]]]:
    """split -> language -> its accents: each language's accents are cut disjointly.

    A language with one accent is train-only, with two has no val (see `cut`).
    """
    groups: dict[str, dict[str, list[Accent]]] = {split: {} for split in TTS_SPLITS}
    for lang, options in accents.items():
        shuffled = [options[i] for i in rng.permutation(len(options))]
        for split, part in cut(np.arange(len(shuffled))).items():
            if len(part):
                groups[split][lang] = sorted((shuffled[i] for i in part), key=lambda a: a.code)
    return groups


def split_variants(
    variants: dict[str, list[str]], rng: np.random.Generator
) -> dict[str, list[str]]:
    """split -> variant names: disjoint, cut per gender so every split has both if it can."""
    groups: dict[str, list[str]] = {split: [] for split in TTS_SPLITS}
    for names in variants.values():
        shuffled = [names[i] for i in rng.permutation(len(names))]
        for split, part in cut(np.arange(len(shuffled))).items():
            groups[split] += [shuffled[i] for i in part]
    return {split: sorted(names) for split, names in groups.items()}


def run(argv: list[str]) -> str:
    """stdout of a short command; DataError when it fails."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise DataError(f"`{' '.join(argv)}` failed ({e}); reinstall with `{APT_TTS}`") from None


def last_line(argv: list[str]) -> str:
    """Last stdout line of a version query whatever its exit status (flite --version exits 1)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = out.strip().splitlines()
    return lines[-1].strip() if lines else ""


def tts_versions() -> dict[str, str]:
    """The installed espeak-ng and flite versions, for a build's info.json."""
    return {
        "espeak-ng": last_line(["espeak-ng", "--version"]),
        "flite": last_line(["flite", "--version"]),
    }
