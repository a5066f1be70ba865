"""Write a CSV manifest of the Asterisk voice prompts for spoken-language identification.

Debian's `asterisk-core-sounds-LANG-wav` packages hold several hundred prompts per language
spoken by one professional voice (8 kHz mono 16-bit WAV under /usr/share/asterisk/sounds/LANG/,
with subfolders such as digits/ and letters/), and `asterisk-core-sounds-LANG` holds their
transcripts (/usr/share/doc/asterisk-core-sounds-LANG/core-sounds-LANG.txt.gz, lines
`KEY: TEXT` where KEY is the WAV's path without `.wav`, e.g. `digits/1`; `;` starts a comment).

The manifest has one row per prompt that has both a WAV file and a spoken transcript:

    audio     absolute path of the WAV (under the sounds folder, e.g. .../sounds/en/digits/1.wav)
    text      the transcript
    language  en, fr, es, it or ru (the label)
    prompt    the prompt key, e.g. `agent-loggedoff`: the same key in two languages is the same
              sentence, so import with `--group-by prompt` to keep a sentence in one split

Transcripts are cleaned as follows:

* a transcript that is only a description in `[...]`, `(...)` or `<...>`, such as
  `[this is a simple beep tone]`, `(10 seconds of silence)` or `<beep ascending>`, marks a
  prompt with no speech (tones, beeps, silence, monkeys): the row is dropped, since it carries no
  language (several of those descriptions are even in English in the other languages' lists).
  The same key is the same sound effect in every language, so a key described so in any
  installed language's transcripts is dropped in all of them (the Italian list, for one, writes
  `confbridge-join: un suono di beep ascendente` where the others write `<beep ascending>` or
  `(beep)`);
* an empty transcript (`dir-welcome:` or a bare `digits/0`) drops the row too;
* inside a sentence, `[...]` holding letters is unwrapped (`Il [suo] messaggio` ->
  `Il suo messaggio`: the word is spoken) and `[...]` holding only symbols is removed
  (`dot [.]` -> `dot`: it glosses the spoken word);
* `(...)` inside a sentence is kept as written: those mix spoken words with editors' notes
  and cannot be told apart mechanically;
* a transcript that repeats its own key (`conf-adminmenu: conf-adminmenu: ...`) loses it.

The counts of rows, of transcripts without a WAV, of WAVs without a transcript and of dropped
descriptions are printed per language. Missing packages are an error (exit status 2) naming the
`apt-get install` line that adds them.

Usage:

    python tools/asterisk_manifest.py --out /tmp/asterisk/prompts.csv
    python tools/asterisk_manifest.py --out prompts.csv --languages en,fr
    mmjax data import asterisk-audio --manifest /tmp/asterisk/prompts.csv \\
        --map audio=audio,label=language --group-by prompt --sample-rate 8000
"""

import argparse
import csv
import dataclasses
import gzip
import os
import re
import sys
from collections.abc import Sequence, Set
from pathlib import Path

LANGUAGES = ("en", "fr", "es", "it", "ru")
SOUNDS_DIR = Path("/usr/share/asterisk/sounds")
DOC_DIR = Path("/usr/share/doc")
COLUMNS = ("audio", "text", "language", "prompt")

DESCRIPTION = re.compile(r"^\s*(\[[^\]]*\]|\([^)]*\)|<[^>]*>)\s*$")
BRACKETS = re.compile(r"\[([^\]]*)\]")


@dataclasses.dataclass
class Counts:
    """What happened to one language's prompts."""

    rows: int = 0
    transcripts_without_wav: int = 0
    wavs_without_transcript: int = 0
    descriptions: int = 0
    empty: int = 0


def transcript_path(language: str, doc_dir: Path = DOC_DIR) -> Path:
    return doc_dir / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz"


def missing_packages(languages: Sequence[str], sounds_dir: Path, doc_dir: Path) -> list[str]:
    """Both Debian packages of every language whose transcripts or WAV files are missing."""
    missing = []
    for lang in languages:
        no_text = not transcript_path(lang, doc_dir).is_file()
        no_wav = not (sounds_dir / lang).is_dir() or not wav_files(sounds_dir / lang)
        if no_text or no_wav:
            missing += [f"asterisk-core-sounds-{lang}", f"asterisk-core-sounds-{lang}-wav"]
    return missing


def clean_text(key: str, text: str) -> str | None:
    """The spoken transcript, or None when `text` only describes a non-speech sound."""
    if DESCRIPTION.match(text):
        return None
    if text.startswith(f"{key}:"):
        text = text[len(key) + 1 :]
    text = BRACKETS.sub(lambda m: m.group(1) if re.search(r"[^\W\d_]", m.group(1)) else " ", text)
    return " ".join(text.split())


def read_transcripts(path: Path) -> dict[str, str]:
    """key -> raw transcript ("" when the line has none); the first line of a key wins."""
    transcripts: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8-sig") as f:
        for line in f:
            line = line.strip().lstrip("\ufeff")
            if not line or line.startswith(";"):
                continue
            key, _, text = line.partition(":")
            key = key.strip().removesuffix(".wav")
            if key:
                transcripts.setdefault(key, text.strip())
    return transcripts


def wav_files(folder: Path) -> dict[str, Path]:
    """key (path below `folder` without .wav, '/'-separated) -> WAV path; follows links."""
    found = {}
    for parent, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            if name.lower().endswith(".wav"):
                path = Path(parent) / name
                found[path.relative_to(folder).with_suffix("").as_posix()] = path.absolute()
    return found


def non_speech_keys(doc_dir: Path) -> set[str]:
    """The keys whose transcript is only a description in some installed language."""
    keys = set()
    for lang in LANGUAGES:
        path = transcript_path(lang, doc_dir)
        if path.is_file():
            keys |= {k for k, t in read_transcripts(path).items() if t and DESCRIPTION.match(t)}
    return keys


def language_rows(
    language: str, sounds_dir: Path, doc_dir: Path, non_speech: Set[str] = frozenset()
) -> tuple[list[dict[str, str]], Counts]:
    """The manifest rows of one language and what was skipped (`non_speech`: keys to drop)."""
    transcripts = read_transcripts(transcript_path(language, doc_dir))
    wavs = wav_files(sounds_dir / language)
    counts = Counts(
        transcripts_without_wav=len(transcripts.keys() - wavs.keys()),
        wavs_without_transcript=len(wavs.keys() - transcripts.keys()),
    )
    rows = []
    for key in sorted(transcripts.keys() & wavs.keys()):
        raw = transcripts[key]
        text = clean_text(key, raw) if raw else ""
        if text is None or key in non_speech:
            counts.descriptions += 1
        elif not text:
            counts.empty += 1
        else:
            rows.append(
                {"audio": str(wavs[key]), "text": text, "language": language, "prompt": key}
            )
    counts.rows = len(rows)
    return rows, counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a CSV manifest (audio, text, language, prompt) of the Asterisk prompts."
    )
    parser.add_argument("--out", required=True, type=Path, help="the CSV file to write")
    parser.add_argument(
        "--languages",
        default=",".join(LANGUAGES),
        help=f"comma-separated languages (default {','.join(LANGUAGES)})",
    )
    parser.add_argument("--sounds-dir", type=Path, default=SOUNDS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--doc-dir", type=Path, default=DOC_DIR, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if not languages or unknown:
        print(
            f"error: --languages: expected some of {', '.join(LANGUAGES)}, got {args.languages!r}",
            file=sys.stderr,
        )
        return 2
    missing = missing_packages(languages, args.sounds_dir, args.doc_dir)
    if missing:
        print(
            "error: the Asterisk prompts of some languages are not installed; as root, run:\n"
            f"  apt-get install {' '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    rows = []
    non_speech = non_speech_keys(args.doc_dir)
    print(f"{'lang':<5} {'rows':>5} {'no wav':>7} {'no text':>8} {'non-speech':>11} {'empty':>6}")
    for lang in languages:
        lang_rows, c = language_rows(lang, args.sounds_dir, args.doc_dir, non_speech)
        rows += lang_rows
        print(
            f"{lang:<5} {c.rows:>5} {c.transcripts_without_wav:>7} "
            f"{c.wavs_without_transcript:>8} {c.descriptions:>11} {c.empty:>6}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"wrote {len(rows)} rows to {args.out} ('no wav': transcripts without a WAV, 'no text': "
        "WAVs without a transcript, both skipped; 'non-speech' and 'empty': transcripts that "
        "describe a sound ([...], (...), <...>, here or in another language), or nothing, dropped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
