"""Emoji: a small real build (Unicode's emoji-test.txt, Noto Color Emoji, MiniLM tokenizer)."""

import hashlib
import json
import re
import shutil
import unicodedata
from collections import Counter

import numpy as np
import pytest

from mmjax.data.builders import emoji
from mmjax.data.records import decode_record
from mmjax.errors import DataError
from mmjax.registry import DATASETS

GROUPS = [
    "Activities",
    "Animals & Nature",
    "Flags",
    "Food & Drink",
    "Objects",
    "People & Body",
    "Smileys & Emotion",
    "Symbols",
    "Travel & Places",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(root, info) of one small build shared by the module."""
    root = tmp_path_factory.mktemp("data")
    return root, emoji.prepare_emoji(root, small=True, progress=False)


@pytest.fixture(scope="module")
def records(built):
    """split -> every decoded record of that split."""
    import grain  # imports jax; only the tests that read shards need it

    root, _ = built
    out = {}
    for split in emoji.SPLITS:
        paths = emoji.shard_paths(root, split)
        source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
        out[split] = [decode_record(source[i]) for i in range(len(source))]
    return out


def _squash(text: str) -> str:
    """What survives the uncased MiniLM tokenizer and its decoder: lower case, no accents,
    no spaces."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c) and not c.isspace())


def test_registered():
    assert DATASETS.get("emoji").prepare is emoji.prepare_emoji


def test_info(built):
    root, info = built
    assert emoji.load_info(root) == info
    assert info["name"] == "emoji" and info["version"] == emoji.VERSION
    assert info["num_classes"] == 9 and info["class_names"] == GROUPS
    assert "Component" not in info["class_names"]
    assert info["subgroups"] == sorted(info["subgroups"]) and len(info["subgroups"]) > 80
    assert info["text_vocab"] == {"tokenizer": "minilm-l6", "length": 16}
    assert info["modalities"]["image"] == {"shape": [32, 32, 3], "dtype": "uint8"}
    assert info["modalities"]["text"]["shape"] == [16]
    assert info["modalities"]["text"]["dtype"] == "int32"
    assert info["modalities"]["text"]["attention_mask"] == {
        "field": "text.attention_mask",
        "shape": [16],
        "dtype": "bool",
    }
    assert info["small"] is True and info["seed"] == 0 and info["build_seconds"] > 0
    assert info["skipped"] == len(info["skipped_captions"])
    assert {"fonts-noto-color-emoji", "unicode-data", "pillow", "tokenizer"} <= set(info["sources"])
    assert info["sources"]["fonts-noto-color-emoji"] and info["sources"]["unicode-data"]
    for split, entry in info["splits"].items():
        assert entry["num_records"] > 0, f"{split} is empty"
        assert entry["num_records"] == sum(s["num_records"] for s in entry["shards"])
        assert entry["groups"] + len(entry["missing_groups"]) == 9
    assert any("sha256" in note for note in info["notes"])
    assert not list(root.glob(".emoji-*")), "temporary build dirs were left behind"


def test_records(built, records):
    _, info = built
    source, _ = emoji._read_emoji_test()
    by_caption = {e.caption: e for e in source}
    from mmjax.pretrained.load import tokenize

    for split, rows in records.items():
        assert len(rows) == info["splits"][split]["num_records"]
        for r in rows:
            assert set(r) == {
                "image",
                "text",
                "text.attention_mask",
                "label",
                "subgroup",
                "caption",
                "emoji",
            }
            assert r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8
            assert r["text"].shape == (16,) and r["text"].dtype == np.int32
            mask = r["text.attention_mask"]
            assert mask.shape == (16,) and mask.dtype == bool
            assert mask[0] and (np.sort(mask)[::-1] == mask).all(), "not a prefix of the row"
            # no caption holds a literal "[PAD]": the tokenizer's mask is the non-zero ids
            np.testing.assert_array_equal(mask, r["text"] != 0)
            assert r["label"].shape == () and r["label"].dtype == np.int32
            assert r["subgroup"].shape == () and r["subgroup"].dtype == np.int32
            assert r["caption"].dtype.kind == "U" and r["emoji"].dtype.kind == "U"
            assert 0 <= r["label"] < 9 and 0 <= r["subgroup"] < len(info["subgroups"])
            e = by_caption[str(r["caption"])]
            assert str(r["emoji"]) == e.chars
            assert info["class_names"][r["label"]] == e.group
            assert info["subgroups"][r["subgroup"]] == e.subgroup
            assert (r["image"] < 250).any(), f"{e.caption} is blank"
        captions = [str(r["caption"]) for r in rows]
        texts = np.stack([r["text"] for r in rows])
        masks = np.stack([r["text.attention_mask"] for r in rows])
        ids, attention_mask = tokenize("minilm-l6", captions, length=16)
        np.testing.assert_array_equal(texts, ids)
        np.testing.assert_array_equal(masks, attention_mask)


def test_captions_decode_back(records):
    from tokenizers import Tokenizer

    from mmjax.pretrained.catalog import entry, package_dir

    spec = entry("minilm-l6")
    tokenizer = Tokenizer.from_file(str(package_dir(spec) / spec.tokenizer))
    for r in (r for rows in records.values() for r in rows):
        ids = r["text"].tolist()
        assert ids[0] == 101 and 102 in ids  # [CLS] ... [SEP]
        decoded = _squash(tokenizer.decode(ids))
        caption = _squash(str(r["caption"]))
        if ids[-1] == 0:  # not cut at 16 tokens: the whole caption comes back
            assert decoded == caption, (decoded, caption)
        else:
            assert caption.startswith(decoded) and len(decoded) > len(caption) // 2


def test_images_differ_and_never_cross_splits(records):
    split_of_image: dict[bytes, set[str]] = {}
    for split, rows in records.items():
        for r in rows:
            split_of_image.setdefault(r["image"].tobytes(), set()).add(split)
    total = sum(len(rows) for rows in records.values())
    assert len(split_of_image) >= 0.98 * total, "too many identical images"
    assert all(len(splits) == 1 for splits in split_of_image.values())
    images = np.stack([r["image"] for rows in records.values() for r in rows]).astype(np.float32)
    assert images.std(axis=0).mean() > 20, "the images hardly vary between emoji"


def test_no_base_in_two_splits(records):
    splits_of_base: dict[str, set[str]] = {}
    for split, rows in records.items():
        for r in rows:
            splits_of_base.setdefault(emoji.base_key(str(r["caption"])), set()).add(split)
    leaks = {base: s for base, s in splits_of_base.items() if len(s) > 1}
    assert not leaks
    assert len(splits_of_base) > 100


@pytest.mark.parametrize(
    ("caption", "base"),
    [
        ("thumbs up: medium skin tone", "thumbs up"),
        ("thumbs up", "thumbs up"),
        ("woman cook: dark skin tone", "cook"),
        ("man cook", "cook"),
        ("cook", "cook"),
        ("man: red hair", "person"),
        ("woman", "person"),
        ("woman and man holding hands: light skin tone", "holding hands"),
        ("men holding hands", "holding hands"),
        ("family: man, woman, boy", "family"),
        ("kiss: woman, man", "kiss"),
        ("deaf woman", "deaf"),
        ("princess: light skin tone", "with crown"),
        ("Mrs. Claus", "mx claus"),
        ("man's shoe", "man's shoe"),
        ("flag: Isle of Man", "flag: isle of man"),
        ("keycap: 1", "keycap: 1"),
    ],
)
def test_base_key(caption, base):
    assert emoji.base_key(caption) == base


def test_full_split_plan():
    """Every source emoji's split from its base alone (no rendering): about 80/10/10 of the
    bases, every group in every split, and the rule is a sha256, not Python's hash()."""
    source, _ = emoji._read_emoji_test()
    bases = {emoji.base_key(e.caption) for e in source}
    counts = Counter(emoji.split_of(base) for base in bases)
    assert 0.75 < counts["train"] / len(bases) < 0.85, counts
    assert 0.06 < counts["val"] / len(bases) < 0.14 and 0.06 < counts["test"] / len(bases) < 0.14
    for split in emoji.SPLITS:
        assert {e.group for e in source if emoji.split_of(emoji.base_key(e.caption)) == split} == (
            set(GROUPS)
        )
    bucket = int.from_bytes(hashlib.sha256(b"cook").digest()[:8], "big") % 100
    assert emoji.split_of("cook") == next(s for s, below in emoji.SPLIT_PERCENT if bucket < below)


def test_build_is_deterministic(built, tmp_path):
    _, info = built
    again = emoji.prepare_emoji(tmp_path, small=True, progress=False)
    for split in emoji.SPLITS:
        shards = info["splits"][split]["shards"]
        assert [s["sha256"] for s in again["splits"][split]["shards"]] == [
            s["sha256"] for s in shards
        ]


def test_missing_dataset_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="mmjax data prepare emoji") as error:
        emoji.load_info(tmp_path)
    assert "apt-get install fonts-noto-color-emoji unicode-data" in str(error.value)


def test_build_of_another_version_is_refused(built, tmp_path):
    shutil.copytree(built[0] / "emoji", tmp_path / "emoji")
    path = tmp_path / "emoji" / "info.json"
    info = json.loads(path.read_text())
    info["version"] = "1.0.0"  # built before records kept the attention mask
    path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"version 1\.0\.0.*mmjax data prepare emoji"):
        emoji.load_info(tmp_path)


def test_verify_detects_a_modified_shard(built, tmp_path):
    root, info = built
    emoji.verify_checksums(root)
    shutil.copytree(root / "emoji", tmp_path / "emoji")
    shard = tmp_path / "emoji" / info["splits"]["test"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(shard.name)):
        emoji.verify_checksums(tmp_path)


def test_unknown_split(built):
    with pytest.raises(DataError, match="split"):
        emoji.shard_paths(built[0], "training")


@pytest.mark.parametrize("source", ["EMOJI_TEST", "FONT"])
def test_missing_source_names_the_apt_line(monkeypatch, tmp_path, source):
    monkeypatch.setattr(emoji, source, tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install fonts-noto-color-emoji unicode-data"):
        emoji.prepare_emoji(tmp_path, small=True, progress=False)
    assert not (tmp_path / "emoji").exists()
