"""Published models: load in research code, reproduce the card's accuracy, refuse tampering."""

import shutil

import numpy as np
import pytest
from flax import nnx

import mmjax
from mmjax.publish import PUBLISHED_DIR, published_names, save_pretrained

SPLITS = ("test", "test_human")
AVDIGITS_MODELS = [n for n in published_names() if n.startswith("avdigits-")]


@pytest.fixture(scope="module")
def late():
    return mmjax.load_pretrained("avdigits-late")


@pytest.mark.parametrize("name", AVDIGITS_MODELS)
def test_reproduces_the_card_accuracy_on_a_fresh_build(name, full_root):
    published = mmjax.load_pretrained(name)
    for split in SPLITS:
        result = published.evaluate(split, data_root=str(full_root))
        assert result["same_build"], f"{split}: the fresh build's checksums differ from the card's"
        assert result["accuracy"] == published.card["metrics"]["accuracy"][split]


@pytest.mark.parametrize("name", AVDIGITS_MODELS)
def test_card_noise_curves_end_at_the_cards_accuracy(name):
    """The card's curves run from clean inputs (scale 0) to the dataset's default noise (scale
    1), at which the model was evaluated for the card's accuracy."""
    card = mmjax.load_pretrained(name).card
    curves = card["metrics"]["noise_scales"]
    assert curves["scales"][0] == 0 and curves["scales"][-1] == 1
    for split in SPLITS:
        assert curves[split]["both"][-1] == card["metrics"]["accuracy"][split]
        assert len(curves[split]["image only"]) == len(curves["scales"])


def test_predicts_like_a_predictor(late):
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.random((3, 8, 8, 1), np.float32),
        "audio": rng.standard_normal((3, 8000)),
    }
    probs = late.predict_proba(**inputs)
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert late.predict(**inputs) == [str(k) for k in probs.argmax(1)]


def test_card_describes_the_run(late):
    card = late.card
    assert card["dataset_build"]["name"] == "avdigits" and card["dataset_build"]["version"]
    assert set(card["metrics"]["accuracy"]) >= set(SPLITS)
    assert card["files"] and all(len(h) == 64 for h in card["files"].values())
    assert "avdigits-late" in published_names()


def test_tampered_weights_are_refused(tmp_path):
    shutil.copytree(PUBLISHED_DIR / "avdigits-late", tmp_path / "avdigits-late")
    victim = next(p for p in (tmp_path / "avdigits-late" / "weights").rglob("*") if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(mmjax.CheckpointError, match="differs from its card"):
        mmjax.load_pretrained(tmp_path / "avdigits-late")


def test_unknown_names_and_unfinished_runs(tmp_path, avdigits_root):
    with pytest.raises(mmjax.ConfigError, match="avdigits-late"):
        mmjax.load_pretrained("nothing-by-this-name")
    cfg = mmjax.load_config_file("configs/avdigits_late.py:tiny")
    mmjax.config.set_value(cfg, "data.root", str(avdigits_root))
    mmjax.config.set_value(cfg, "train.steps", 20)
    mmjax.train(cfg, tmp_path / "run", stop_after=5, progress=False)
    with pytest.raises(mmjax.CheckpointError, match="has not finished"):
        save_pretrained(tmp_path / "run", tmp_path / "x")
    (tmp_path / "x").mkdir()
    with pytest.raises(mmjax.ConfigError, match="exists"):
        save_pretrained(tmp_path / "run", tmp_path / "x")
    with pytest.raises(mmjax.ConfigError, match=r"mmjax\.load_encoder\('minilm-l6'\)"):
        mmjax.load_pretrained("minilm-l6")

    # Finished, saved from the workdir and again from the loaded model: the same predictions.
    results = mmjax.train(cfg, tmp_path / "run", progress=False)
    saved = save_pretrained(
        tmp_path / "run", tmp_path / "saved", card={"intended_use": "A test of the card."}
    )
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "card.json", "weights"]
    loaded = mmjax.load_pretrained(saved)
    assert isinstance(loaded, mmjax.PretrainedModel) and isinstance(loaded.model, nnx.Module)
    assert loaded.card["metrics"]["accuracy"] == results["accuracy"]
    assert loaded.card["dataset_build"]["name"] == "avdigits"
    readme = (saved / "README.md").read_text()
    assert "A test of the card." in readme and "## Limitations" in readme
    assert f"| test | {results['accuracy']['test']:.4f} |" in readme
    again = save_pretrained(loaded, tmp_path / "again")
    rng = np.random.default_rng(0)
    inputs = {"image": rng.random((4, 8, 8, 1), np.float32), "audio": rng.random((4, 8000))}
    expected = mmjax.load_predictor(tmp_path / "run").predict_proba(**inputs)
    for folder in (saved, again):
        np.testing.assert_array_equal(
            mmjax.load_pretrained(folder).predict_proba(**inputs), expected
        )
    assert mmjax.load_pretrained(again).card["metrics"] == loaded.card["metrics"]
    evaluated = loaded.evaluate("test", data_root=str(avdigits_root))
    assert evaluated["same_build"] and evaluated["accuracy"] == results["accuracy"]["test"]


def test_emoji_two_tower_reproduces_its_retrieval_numbers(tmp_path_factory):
    """The card's test-split retrieval and zero-shot numbers, on a fresh full emoji build; the
    frozen MiniLM text tower is not stored but loaded from its pinned catalog file."""
    from mmjax.data.builders.emoji import prepare_emoji
    from mmjax.train.retrieval import model_metrics

    root = tmp_path_factory.mktemp("emoji_full")
    prepare_emoji(root, progress=False)
    two_tower = mmjax.load_pretrained("emoji-two-tower")
    assert two_tower.card["catalog_encoders"] == {"text": "minilm-l6"}
    config = mmjax.config.ConfigDict(two_tower.card["config"])
    mmjax.config.set_value(config, "data.root", str(root))
    exp = mmjax.config.experiment_from(config.to_dict())
    measured = model_metrics(two_tower.model, exp, "test")
    assert measured == two_tower.card["metrics"]["retrieval"]["test"]  # ratios of counts
    with pytest.raises(mmjax.ConfigError, match="trained no classifier"):
        two_tower.predict_proba(image=np.zeros((1, 32, 32, 3), np.float32))
