"""Train / val / test assignment for an import without a split column: stratified by label,
seeded, and with `--group-by` a group (a speaker, a source video) never spans two splits."""

from collections import Counter, defaultdict

import numpy as np

SPLITS = ("train", "val", "test")
# Split names a source may use for ours (TFDS and Hugging Face say "validation").
ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def assign_splits(
    labels: list[str],
    groups: list[str] | None,
    *,
    val: float,
    test: float,
    seed: int,
) -> list[str]:
    """One of SPLITS per row. Rows are grouped (each row alone without `groups`); groups, the
    largest first and in a seeded random order among equals, go one by one to the split that
    most lacks their classes: the one maximising sum over the group's classes c of
    rows_c * (share_split * total_c - already_c), val and test winning ties. So every split gets
    about its share of every class, and a group never spans two splits."""
    keys = groups if groups is not None else [str(i) for i in range(len(labels))]
    members: dict[str, list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        members[key].append(row)
    names = sorted(members)
    order = np.random.default_rng(seed).permutation(len(names))
    ranked = sorted(order, key=lambda k: -len(members[names[k]]))  # stable: random among equals
    totals = Counter(labels)
    shares = {"test": test, "val": val, "train": 1.0 - val - test}
    filled = {split: Counter() for split in shares}
    out = [""] * len(labels)
    for k in ranked:
        rows = members[names[k]]
        classes = Counter(labels[r] for r in rows)
        lack = {
            split: sum(n * (share * totals[c] - filled[split][c]) for c, n in classes.items())
            for split, share in shares.items()
        }
        split = max(lack, key=lack.get)  # dict order: test, val, train on ties
        filled[split].update(classes)
        for row in rows:
            out[row] = split
    return out


def small_classes(counts: dict[str, Counter], wanted: tuple[str, ...]) -> list[str]:
    """Warnings for classes that miss a split in `wanted`, with their per-split counts
    (`counts`: split -> class -> records)."""
    classes = sorted({c for per_split in counts.values() for c in per_split})
    warnings = []
    for label in classes:
        absent = [s for s in wanted if not counts[s][label]]
        if absent:
            have = ", ".join(f"{s} {counts[s][label]}" for s in counts)
            warnings.append(
                f"class {label!r} is too small to reach every split: {have} (none in "
                f"{', '.join(absent)})"
            )
    return warnings
