"""WordNet 3.0 (Debian's `wordnet-base`) as lexical data for built datasets: a synset's
lemmas, its hypernyms' lemmas and its gloss's content words, and a pool of adjectives."""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmjax.errors import DataError

WORDNET_DIR = Path("/usr/share/wordnet")
APT_WORDNET = "apt-get install wordnet-base"
# Function words left out of gloss words (WordNet glosses are short definitions).
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "or",
        "and",
        "for",
        "by",
        "with",
        "from",
        "that",
        "which",
        "who",
        "is",
        "are",
        "be",
        "as",
        "at",
        "it",
        "its",
        "into",
        "over",
        "under",
        "than",
        "such",
        "usually",
        "especially",
        "often",
        "something",
        "someone",
        "one",
        "used",
    ]
)


@dataclass(frozen=True)
class Synset:
    offset: int
    lemmas: tuple[str, ...]
    hypernyms: tuple[int, ...]  # offsets of its "@" (hypernym) pointers
    gloss: str  # the definition, without the quoted examples


def read_synset(pos: str, offset: int) -> Synset:
    """The synset at byte `offset` of WordNet's `data.<pos>` file ("noun", "adj", ...)."""
    line = _data_line(pos, offset)
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    if not fields or int(fields[0]) != offset:
        raise DataError(f"{_data_file(pos)}: no synset at offset {offset}; {_remedy()}")
    count = int(fields[3], 16)
    lemmas = tuple(fields[4 + 2 * i].lower() for i in range(count))
    k = 4 + 2 * count
    pointers = [fields[k + 1 + 4 * i : k + 5 + 4 * i] for i in range(int(fields[k]))]
    hypernyms = tuple(int(p[1]) for p in pointers if p[0] == "@")
    return Synset(offset, lemmas, hypernyms, gloss.split(";")[0].strip())


def synset_words(pos: str, offset: int, lemma: str) -> list[str]:
    """The words of a synset that has `lemma` (checked, so another WordNet release fails
    loudly): its lemmas, its hypernyms' lemmas and its gloss's content words, lower case,
    multi-word lemmas split, without repeats, in that order."""
    synset = read_synset(pos, offset)
    if lemma not in synset.lemmas:
        raise DataError(
            f"WordNet synset {offset} ({pos}) is {synset.lemmas}, not {lemma!r}: expected "
            f"WordNet 3.0; {_remedy()}"
        )
    phrases = list(synset.lemmas)
    for hypernym in synset.hypernyms:
        phrases += read_synset(pos, hypernym).lemmas
    words = [w for phrase in phrases for w in re.split(r"[_\s]+", phrase.replace("'s", ""))]
    words += re.findall(r"[a-z]+", synset.gloss.lower())
    return list(dict.fromkeys(w for w in words if len(w) > 1 and w not in STOPWORDS))


def adjectives(count: int, rng: np.random.Generator, lengths: tuple[int, int]) -> list[str]:
    """`count` distinct single-word adjective lemmas of `lengths` letters (inclusive), drawn
    from WordNet's data.adj with `rng`, sorted."""
    found = set()
    for line in _data_file("adj").read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):  # the licence header
            continue
        fields = line.split()
        for i in range(int(fields[3], 16)):
            word = re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).lower()  # "big(a)" -> "big"
            if word.isalpha() and lengths[0] <= len(word) <= lengths[1]:
                found.add(word)
    pool = sorted(found)
    if len(pool) < count:
        raise DataError(f"WordNet has only {len(pool)} such adjectives; {_remedy()}")
    return sorted(pool[i] for i in rng.choice(len(pool), count, replace=False))


def version() -> str:
    """The installed wordnet-base package's version ("" if unknown)."""
    status = Path("/var/lib/dpkg/status")
    text = status.read_text(encoding="utf-8", errors="replace") if status.is_file() else ""
    found = re.search(r"Package: wordnet-base\n(?:[^\n]+\n)*?Version: (\S+)", text)
    return found.group(1) if found else ""


def _data_file(pos: str) -> Path:
    path = WORDNET_DIR / f"data.{pos}"
    if not path.is_file():
        raise DataError(f"WordNet is not installed ({path} is missing): `{APT_WORDNET}`")
    return path


def _data_line(pos: str, offset: int) -> str:
    with _data_file(pos).open("rb") as f:
        f.seek(offset)
        return f.readline().decode("utf-8", errors="replace")


def _remedy() -> str:
    return f"reinstall with `{APT_WORDNET}`"
