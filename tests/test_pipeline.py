"""grain pipelines over the AV-Digits shards: deterministic, complete, checkpointable."""

import dataclasses

import numpy as np

from mmjax.config import DataConfig
from mmjax.data import pipeline, sources
from mmjax.data.builders.avdigits import load_info

MODALITIES = ("audio", "image")


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(root=str(root), image_noise=0.4, audio_snr_db=0.0, **kw)


def _records(root, split: str) -> int:
    return load_info(root)["splits"][split]["num_records"]


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_batches_shapes_and_determinism(avdigits_root):
    cfg = _cfg(avdigits_root)
    a = _take(iter(pipeline.train_dataset(cfg, MODALITIES, 16, seed=0)), 3)
    b = _take(iter(pipeline.train_dataset(cfg, MODALITIES, 16, seed=0)), 3)
    c = _take(iter(pipeline.train_dataset(cfg, MODALITIES, 16, seed=1)), 1)
    batch = a[0]
    assert set(batch) == {"audio", "image", "audio_mask", "image_mask", "label"}
    assert batch["image"].shape == (16, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["audio"].shape == (16, 8000) and batch["audio"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["image_mask"].all()
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_iterator_state_restores_the_data_order(avdigits_root):
    cfg = _cfg(avdigits_root)
    iterator = iter(pipeline.train_dataset(cfg, MODALITIES, 16, seed=0))
    _take(iterator, 2)
    state = iterator.get_state()
    expected = _take(iterator, 2)
    fresh = iter(pipeline.train_dataset(cfg, MODALITIES, 16, seed=0))
    fresh.set_state(state)
    for x, y in zip(_take(fresh, 2), expected):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_epochs_are_reshuffled(avdigits_root):
    cfg = _cfg(avdigits_root)
    n = _records(avdigits_root, "train")
    size = next(b for b in (10, 5, 2, 1) if n % b == 0)  # batches that tile an epoch
    iterator = iter(pipeline.train_dataset(cfg, MODALITIES, size, seed=0))
    labels = np.concatenate([b["label"] for b in _take(iterator, 2 * n // size)])
    first, second = labels[:n], labels[n:]
    assert np.array_equal(np.sort(first), np.sort(second))
    assert not np.array_equal(first, second)


def test_modality_dropout_keeps_one_modality(avdigits_root):
    cfg = _cfg(avdigits_root, modality_dropout=0.5)
    batch = next(iter(pipeline.train_dataset(cfg, MODALITIES, 64, seed=0)))
    present = batch["image_mask"].astype(int) + batch["audio_mask"].astype(int)
    assert present.min() == 1 and (present == 1).any() and (present == 2).any()


def test_eval_covers_every_record_once_with_fixed_noise(avdigits_root):
    cfg = _cfg(avdigits_root)
    runs = [list(pipeline.eval_batches(cfg, MODALITIES, "test", 16)) for _ in range(2)]
    assert sum(rows for _, rows in runs[0]) == _records(avdigits_root, "test")
    assert all(batch["label"].shape == (16,) for batch, _ in runs[0])
    for (x, _), (y, _) in zip(*runs):
        np.testing.assert_array_equal(x["audio"], y["audio"])
    # Once each: without noise, the real rows are exactly the split's records, in order.
    clean = dataclasses.replace(cfg, image_noise=0.0, audio_snr_db=100.0)
    source = sources.open_source(clean)
    records = source.open_split("test")
    decode = source.decoder(MODALITIES)
    rows = [
        {k: v[i] for k, v in batch.items()}
        for batch, real in pipeline.eval_batches(clean, MODALITIES, "test", 16)
        for i in range(real)
    ]
    assert len(rows) == len(records)
    for i, row in enumerate(rows):
        record = decode.map(records[i])
        for key in record:
            np.testing.assert_array_equal(row[key], record[key], err_msg=f"row {i}, {key}")


def test_worker_processes_give_the_same_batches(avdigits_root):
    cfg = _cfg(avdigits_root)
    local = _take(iter(pipeline.train_dataset(cfg, MODALITIES, 16, seed=0)), 2)
    workers = dataclasses.replace(cfg, workers=2)
    remote = _take(iter(pipeline.train_dataset(workers, MODALITIES, 16, seed=0)), 2)
    for x, y in zip(local, remote):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_noise_levels_span_none_to_the_set_level():
    """data.noise_levels: each example's noise amplitude is the set level times its own
    uniform draw; without it every example gets exactly the set level."""
    from mmjax.data.transforms import AddNoise

    rng = np.random.default_rng(0)
    image = np.full((64, 64, 1), 0.5, np.float32)
    audio = rng.standard_normal(8000).astype(np.float32)
    element = {"image": image, "audio": audio}

    def measured(levels: bool, seed: int) -> tuple[float, float]:
        out = AddNoise(0.1, 0.0, levels).random_map(element, np.random.default_rng(seed))
        image_std = float(np.std(out["image"] - image))
        snr_db = 10 * np.log10(np.mean(audio**2) / np.mean((out["audio"] - audio) ** 2))
        return image_std, float(snr_db)

    fixed = np.array([measured(False, seed) for seed in range(20)])
    np.testing.assert_allclose(fixed[:, 0], 0.1, rtol=0.05)
    np.testing.assert_allclose(fixed[:, 1], 0.0, atol=0.2)
    drawn = np.array([measured(True, seed) for seed in range(200)])
    assert drawn[:, 0].min() < 0.01 and drawn[:, 0].max() > 0.09  # none ... the set level
    assert 0.04 < drawn[:, 0].mean() < 0.06  # uniform amplitude: mean half the level
    assert drawn[:, 1].min() > -0.2 and np.median(drawn[:, 1]) > 4.0  # never noisier than 0 dB
