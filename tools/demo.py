"""`make demo`: prepare AV-Digits, train image-only, audio-only and late-fusion models, compare.

Workdirs live under runs/demo/; running the demo again resumes or reuses finished runs.
"""

import sys
import time
from pathlib import Path

import mmjax
from mmjax.data import sources

CONFIGS = {
    "image only": "configs/avdigits_image.py",
    "audio only": "configs/avdigits_audio.py",
    "late fusion": "configs/avdigits_late.py",
}
SPLITS = {"test": "held-out TTS voices", "test_human": "real human recordings"}


def main() -> int:
    mmjax.log_to_stderr()
    started = time.perf_counter()
    root = sources.data_root()
    try:
        sources.load_info(root, "avdigits")
        print(f"AV-Digits already prepared in {root / 'avdigits'}")
    except mmjax.DataError:
        mmjax.DATASETS.get("avdigits").prepare(root)
    rows = {}
    for name, path in CONFIGS.items():
        print(f"\n== {name} ({path})")
        workdir = Path("runs/demo") / Path(path).stem
        rows[name] = mmjax.train(mmjax.load_config_file(path), workdir)
    print("\nAV-Digits accuracy, default noise on both modalities")
    print("  " + "; ".join(f"{split}: {what}" for split, what in SPLITS.items()))
    print(f"{'model':<12}" + "".join(f"{split:>12}" for split in SPLITS) + f"{'train s':>10}")
    for name, r in rows.items():
        cells = "".join(f"{r['accuracy'].get(split, float('nan')):>12.3f}" for split in SPLITS)
        print(f"{name:<12}{cells}{r['train_seconds']:>10.1f}")
    print(f"\ndemo wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
