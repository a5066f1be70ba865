"""Emoji: real emoji images paired with their Unicode CLDR names (image <-> caption).

Every fully-qualified emoji of Unicode's emoji-test.txt (apt `unicode-data`) outside the
"Component" group is drawn with Noto Color Emoji (apt `fonts-noto-color-emoji`) by Pillow
and reduced to a 32x32 RGB image; its caption is the CLDR name ("thumbs up: medium skin
tone"), tokenised for MiniLM-L6. The label is the emoji's group (9 classes, e.g. "Flags"),
so zero-shot classification can compare images with group names.

Splits hold out whole emoji families: a caption's base key (`base_key`) drops skin tones,
hair styles, the people of a family/kiss/couple and gender words, so "woman cook: dark skin
tone" and "cook" share the base "cook"; bases whose images are pixel-identical (e.g. the
flags of France and St. Martin) are merged too. A base's split is fixed by a sha256 of its
key (80/10/10), so it does not depend on the seed, which only orders records.

Layout: `root/emoji/info.json` plus `{split}.array_record-*` shards of npz records
{"image": uint8 [32,32,3], "text": int32 [16], "text.attention_mask": bool [16] (the
tokenizer's mask: True on real tokens), "label": int32 [], "subgroup": int32 [],
"caption": str [], "emoji": str []}.
"""

import hashlib
import importlib.metadata
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmjax.batch_keys import attention_key
from mmjax.data.builders.built import Built, building, write_info
from mmjax.data.records import write_shards
from mmjax.errors import DataError
from mmjax.progress import progress_log

NAME = "emoji"
VERSION = "1.1.0"  # 1.1.0: records store text.attention_mask
SPLITS = ("train", "val", "test")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
APT_PACKAGES = ("fonts-noto-color-emoji", "unicode-data")
APT = "apt-get install " + " ".join(APT_PACKAGES)
PIP_PILLOW = "pip install --force-reinstall pillow"  # PyPI wheels bundle raqm
FONT_SIZE = 109  # Noto Color Emoji is a bitmap font with this one strike: 136x128 px glyphs
GLYPH = (136, 128)
CANVAS = 136  # square, so the 32x32 reduction keeps the aspect ratio
IMAGE_SIZE = 32
TOKENIZER = "minilm-l6"
TEXT_LENGTH = 16
LEFT_OUT_GROUP = "Component"  # bare skin-tone and hair swatches, not emoji of their own
SPLIT_PERCENT = (("train", 80), ("val", 90), ("test", 100))  # cumulative buckets of 100
SMALL_EVERY = 8  # a small build keeps every 8th split key
TRAIN_SHARDS = 2
# Captions whose part after ':' says what the emoji is, not a variant of it.
IDENTITY_PREFIXES = ("flag", "keycap")
GENDER_WORDS = frozenset({"man", "woman", "person", "men", "women", "people"})
# Gendered trios that gender words alone do not join, mapped to one member of the trio.
ALIASES = {
    "boy": "child",
    "girl": "child",
    "old man": "older person",
    "old woman": "older person",
    "prince": "person with crown",
    "princess": "person with crown",
    "santa claus": "mx claus",
    "mrs. claus": "mx claus",
    "merman": "merperson",
    "mermaid": "merperson",
}
BASE_RULE = (
    "split key: the caption's base (`mmjax.data.builders.emoji.base_key`): the part before "
    "':' (dropping skin tones, hair styles and the people of a family, kiss or couple; "
    "'flag: X' and 'keycap: X' are kept whole), lower-cased, with the gendered trios "
    f"{sorted(ALIASES)} mapped to one member and the words {sorted(GENDER_WORDS)} (and an "
    "'and' after one) removed ('' -> 'person'), so 'woman cook: dark skin tone', 'man cook' "
    "and 'cook' share the base 'cook'; bases with pixel-identical images are merged (their "
    "key is the smallest base). Each key goes to train/val/test by the first 8 bytes of its "
    "sha256 mod 100 (< 80 train, < 90 val, else test); the seed only shuffles record order."
)
_LINE = re.compile(r"^([0-9A-F ]+?)\s*;\s*([a-z-]+)\s*#\s*(\S+)\s+E\d+\.\d+\s+(.+?)\s*$")


@dataclass(frozen=True)
class Emoji:
    chars: str
    caption: str  # the CLDR name
    group: str
    subgroup: str


def base_key(caption: str) -> str:
    """The name shared by an emoji's variants ('thumbs up: medium skin tone' -> 'thumbs up',
    'woman cook' -> 'cook'); see BASE_RULE."""
    name = caption.lower()
    if name.split(":")[0] in IDENTITY_PREFIXES:
        return name
    name = name.split(":")[0].strip()
    name = ALIASES.get(name, name)
    kept: list[str] = []
    previous = ""
    for word in name.split():
        if word not in GENDER_WORDS and not (word == "and" and previous in GENDER_WORDS):
            kept.append(word)
        previous = word
    return " ".join(kept) or "person"


def split_of(key: str) -> str:
    """train/val/test for a split key, from its sha256 (stable across runs and machines)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return next(split for split, below in SPLIT_PERCENT if bucket < below)


def prepare_emoji(root: Path, *, small: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Builds Emoji into `root/emoji` (atomically) and returns its info dict."""
    started = time.perf_counter()
    log = progress_log(progress)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    emojis, emoji_version = _read_emoji_test()
    images, skipped = _render_all(emojis)
    kept = [e for e in emojis if e.caption not in skipped]
    keys = _split_keys(kept, images)
    if small:
        chosen = set(sorted(set(keys.values()))[::SMALL_EVERY])
        kept = [e for e in kept if keys[base_key(e.caption)] in chosen]
    num_keys = len({keys[base_key(e.caption)] for e in kept})
    log(f"{NAME}: {len(kept)} emoji under {num_keys} split keys, {len(skipped)} skipped")
    groups = sorted({e.group for e in emojis})
    subgroups = sorted({e.subgroup for e in emojis})
    token_rows, attention_rows = _tokenize([e.caption for e in kept])
    tokens = dict(zip(kept, token_rows, strict=True))
    attention = dict(zip(kept, attention_rows, strict=True))
    rng = np.random.default_rng(seed)
    by_split: dict[str, list[Emoji]] = {split: [] for split in SPLITS}
    for e in kept:
        by_split[split_of(keys[base_key(e.caption)])].append(e)

    with building(root / NAME) as build_dir:
        splits = {}
        for split, members in by_split.items():
            records = [
                {
                    "image": images[e.caption],
                    "text": tokens[e],
                    attention_key("text"): attention[e],
                    "label": np.array(groups.index(e.group), np.int32),
                    "subgroup": np.array(subgroups.index(e.subgroup), np.int32),
                    "caption": np.array(e.caption),
                    "emoji": np.array(e.chars),
                }
                for e in (members[i] for i in rng.permutation(len(members)))
            ]
            shards = write_shards(
                records, build_dir, split, TRAIN_SHARDS if split == "train" else 1
            )
            covered = {e.group for e in members}
            splits[split] = {
                "num_records": len(records),
                "num_keys": len({keys[base_key(e.caption)] for e in members}),
                "groups": len(covered),
                "missing_groups": [g for g in groups if g not in covered],
                "shards": shards,
            }
        notes = _notes(splits, small, int(np.count_nonzero(attention_rows[:, -1])))
        info = {
            "name": NAME,
            "version": VERSION,
            "num_classes": len(groups),
            "class_names": groups,
            "subgroups": subgroups,
            "text_vocab": {"tokenizer": TOKENIZER, "length": TEXT_LENGTH},
            "modalities": {
                "image": {"shape": [IMAGE_SIZE, IMAGE_SIZE, 3], "dtype": "uint8"},
                "text": {
                    "shape": [TEXT_LENGTH],
                    "dtype": "int32",
                    "tokenizer": TOKENIZER,
                    "attention_mask": {
                        "field": attention_key("text"),
                        "shape": [TEXT_LENGTH],
                        "dtype": "bool",
                    },
                },
            },
            "splits": splits,
            "notes": notes,
            "sources": _sources(emoji_version),
            "skipped": len(skipped),
            "skipped_captions": skipped,
            "seed": seed,
            "small": small,
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        write_info(build_dir, info)
    for note in notes[1:]:
        log(f"{NAME}: {note}")
    log(f"{NAME}: " + ", ".join(f"{k} {v['num_records']}" for k, v in splits.items()))
    log(f"{NAME}: built {root / NAME} in {info['build_seconds']:.1f} s")
    return info


def _read_emoji_test() -> tuple[list[Emoji], str]:
    """The fully-qualified emoji outside "Component", in file order, and the file's version."""
    if not EMOJI_TEST.is_file():
        raise DataError(f"Emoji needs Unicode's {EMOJI_TEST}: `{APT}`")
    group = subgroup = version = ""
    emojis = []
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.startswith("# Version:"):
            version = line.split(":", 1)[1].strip()
        elif (match := _LINE.match(line)) and match[2] == "fully-qualified":
            chars = "".join(chr(int(cp, 16)) for cp in match[1].split())
            if chars != match[3]:
                raise DataError(f"{EMOJI_TEST}: {line!r}: code points and emoji differ")
            if group != LEFT_OUT_GROUP:
                emojis.append(Emoji(chars, match[4], group, subgroup))
    if not emojis:
        raise DataError(f"{EMOJI_TEST}: no fully-qualified emoji found; reinstall with `{APT}`")
    return emojis, version


def _render_all(emojis: list[Emoji]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """caption -> uint8 [32,32,3] image, and the skipped captions -> why.

    An emoji is skipped when it draws nothing (all white), or when the font has no single
    glyph for its sequence, so it would be drawn as its parts side by side.
    """
    from PIL import Image, ImageDraw, ImageFont, features

    if not FONT.is_file():
        raise DataError(f"Emoji needs the Noto Color Emoji font {FONT}: `{APT}`")
    if not features.check_feature("raqm"):
        raise DataError(
            "Emoji needs Pillow with raqm text layout to draw multi-code-point emoji as one "
            f"glyph; PIL.features.check_feature('raqm') is False: `{PIP_PILLOW}`"
        )
    try:
        font = ImageFont.truetype(str(FONT), FONT_SIZE, layout_engine=ImageFont.Layout.RAQM)
    except OSError as e:
        raise DataError(f"{FONT}: unreadable ({e}); reinstall with `{APT}`") from None
    images, skipped = {}, {}
    top = (CANVAS - GLYPH[1]) // 2
    for e in emojis:
        left, upper, right, lower = font.getbbox(e.chars)
        if right - left > GLYPH[0] or lower - upper > GLYPH[1]:
            skipped[e.caption] = "not one glyph"
            continue
        canvas = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((0, top), e.chars, font=font, embedded_color=True)
        white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, canvas).convert("RGB")
        image = np.asarray(flat.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
        if (image == 255).all():
            skipped[e.caption] = "blank"
        else:
            images[e.caption] = image
    return images, skipped


def _split_keys(emojis: list[Emoji], images: dict[str, np.ndarray]) -> dict[str, str]:
    """base -> split key: the smallest base linked to it by pixel-identical images."""
    parent: dict[str, str] = {}

    def find(base: str) -> str:
        while parent[base] != base:
            base = parent[base]
        return base

    first_base: dict[bytes, str] = {}
    for e in emojis:
        base = base_key(e.caption)
        parent.setdefault(base, base)
        a, b = find(base), find(first_base.setdefault(images[e.caption].tobytes(), base))
        parent[max(a, b)] = min(a, b)
    return {base: find(base) for base in parent}


def _tokenize(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [N, 16], attention_mask bool [N, 16]) of the captions, MiniLM's tokenizer."""
    from mmjax.pretrained.load import tokenize

    return tokenize(TOKENIZER, captions, length=TEXT_LENGTH)


def _notes(splits: dict, small: bool, full_rows: int) -> list[str]:
    notes = [
        BASE_RULE,
        f"{full_rows} captions fill all {TEXT_LENGTH} token positions of `text`: longer ones "
        "(multi-person skin-tone combinations) are cut there; `caption` is always whole",
    ]
    if small:
        notes.append(f"small build: every {SMALL_EVERY}th split key (sorted), same split rule")
    for split, entry in splits.items():
        if entry["missing_groups"]:
            notes.append(f"{split} has no emoji of group(s) {entry['missing_groups']}")
    if not any(entry["missing_groups"] for entry in splits.values()):
        notes.append("every group has emoji in every split")
    return notes


def _sources(emoji_version: str) -> dict:
    import PIL
    from PIL import features

    from mmjax.pretrained.catalog import entry

    package = entry(TOKENIZER).package
    return {
        **{p: _dpkg_version(p) for p in APT_PACKAGES},
        "emoji-test.txt": f"{EMOJI_TEST} (Emoji {emoji_version})",
        "font": f"{FONT} at {FONT_SIZE} px",
        "pillow": f"{PIL.__version__} (raqm {features.version('raqm')})",
        "tokenizer": f"{TOKENIZER} ({package} {importlib.metadata.version(package)})",
    }


def _dpkg_version(package: str) -> str:
    """The installed Debian package version, or "" where dpkg does not know it."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


BUILT = Built(NAME, "Emoji", VERSION, SPLITS, sources=f"`{APT}`")
load_info = BUILT.load_info
shard_paths = BUILT.shard_paths
verify_checksums = BUILT.verify
BUILT.register(prepare_emoji)
