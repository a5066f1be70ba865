"""`mmjax export` artifacts run with only jax and numpy, equal the predictor, refuse bad files."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import mmjax
from mmjax.cli import main
from mmjax.export import export_model

MODELS = ["avdigits-late", "avdigits-mbt"]

# Run in a fresh interpreter where flax, orbax and mmjax's model code cannot be imported.
ONLY_JAX_AND_NUMPY = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flax", "orbax", "optax", "grain") or name.startswith(
            "mmjax.models"
        ):
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, Blocked())
import numpy as np
import mmjax

model = mmjax.load_exported(sys.argv[1])
batches = np.load(sys.argv[2])
out = {}
for name in ("both", "missing"):
    batch = {k.split("/", 1)[1]: batches[k] for k in batches.files if k.startswith(name + "/")}
    out[name] = model.predict_proba(batch)
out["image only"] = model.predict_proba({"image": batches["both/image"]})
np.savez(sys.argv[3], **out)
assert not any(m.startswith(("flax", "mmjax.models")) for m in sys.modules)
"""


def _batches(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    both = {
        "image": rng.random((5, 8, 8, 1), np.float32),
        "audio": rng.standard_normal((5, 8000)).astype(np.float32),
        "image_mask": np.ones(5, bool),
        "audio_mask": np.ones(5, bool),
    }
    missing = dict(both)  # rows 0-1 without audio, row 4 without the image
    missing["audio_mask"] = np.array([False, False, True, True, True])
    missing["image_mask"] = np.array([True, True, True, True, False])
    missing["audio"] = np.where(missing["audio_mask"][:, None], both["audio"], 0)
    missing["image"] = np.where(missing["image_mask"][:, None, None, None], both["image"], 0)
    return {"both": both, "missing": missing}


@pytest.mark.parametrize("name", MODELS)
def test_runs_with_only_jax_and_numpy_and_equals_the_predictor(name, tmp_path):
    model = mmjax.load_pretrained(name)
    path = export_model(model, tmp_path / "model.jaxexport", platforms=("cpu", "cuda", "tpu"))
    batches = _batches(np.random.default_rng(0))
    flat = {f"{k}/{key}": v for k, batch in batches.items() for key, v in batch.items()}
    np.savez(tmp_path / "batches.npz", **flat)
    done = subprocess.run(
        [sys.executable, "-c", ONLY_JAX_AND_NUMPY, str(path), str(tmp_path / "batches.npz"),
         str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for key, batch in batches.items():
        np.testing.assert_allclose(out[key], model.batch_proba(batch), atol=1e-6, rtol=0)
    image_only = dict(batches["both"], audio_mask=np.zeros(5, bool))
    image_only["audio"] = np.zeros_like(image_only["audio"])
    np.testing.assert_allclose(out["image only"], model.batch_proba(image_only), atol=1e-6, rtol=0)
    assert not np.allclose(out["both"], out["missing"])  # the masks did change the answer
    meta = json.loads(zipfile.ZipFile(path).read("meta.json"))
    assert meta["class_names"] == model.class_names and meta["platforms"] == ["cpu", "cuda", "tpu"]


def test_corrupt_truncated_and_foreign_platform_artifacts_are_refused(tmp_path, capsys):
    model = mmjax.load_pretrained("avdigits-late")
    good = export_model(model, tmp_path / "good.jaxexport")
    loaded = mmjax.load_exported(good)
    with pytest.raises(mmjax.InputError, match=r"inputs\['audio'\]: expected float32 \(2, 8000\)"):
        loaded.predict_proba({"image": np.zeros((2, 8, 8, 1)), "audio": np.zeros((2, 10))})
    (tmp_path / "truncated.jaxexport").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(mmjax.CheckpointError, match="truncated or corrupted"):
        mmjax.load_exported(tmp_path / "truncated.jaxexport")
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tmp_path / "flip.jaxexport", "w") as out:
        for name in source.namelist():
            data = bytearray(source.read(name))
            if name == "weights.npz":
                data[-100] ^= 1
            out.writestr(name, bytes(data))
    with pytest.raises(mmjax.CheckpointError, match=r"weights\.npz does not match its sha256"):
        mmjax.load_exported(tmp_path / "flip.jaxexport")
    tpu = export_model(model, tmp_path / "tpu.jaxexport", platforms=("tpu",))
    with pytest.raises(mmjax.CheckpointError, match="exported for tpu only, and this process runs"):
        mmjax.load_exported(tpu)
    assert main(["export", "--model", "avdigits-late", "--out", str(tmp_path / "x"), "--platforms",
                 "gpu"]) == 2  # fmt: skip
    assert "--platforms gpu: each one of cpu, cuda, rocm, tpu" in capsys.readouterr().err
