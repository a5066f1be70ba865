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

MODELS = ["avdigits-late", "avdigits-mbt", "product-clips-mbt"]  # every published classifier

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
first = model.modalities[0]  # given alone (with its attention mask, for text)
alone = {k: batches["both/" + k] for k in model.inputs if k.split(".")[0] == first}
out["first only"] = model.predict_proba(alone)
np.savez(sys.argv[3], **out)
assert not any(m.startswith(("flax", "mmjax.models")) for m in sys.modules)
"""


def _batches(inputs: dict, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """A batch of 5 with every modality, and the same with the first modality missing in rows
    0-1 and the last one in row 4 (inputs zeroed where missing, as the pipeline does)."""
    both = {}
    for key, spec in inputs.items():
        shape = (5, *spec["shape"])
        if spec["dtype"] == "bool":
            both[key] = np.ones(shape, bool)
        elif spec["dtype"] == "int32":
            both[key] = rng.integers(1, 50, shape).astype(np.int32)
        else:
            both[key] = rng.random(shape, np.float32)
    missing = dict(both)
    modalities = [k[: -len("_mask")] for k in inputs if k.endswith("_mask") and "." not in k]
    for m, rows in ((modalities[0], [0, 1]), (modalities[-1], [4])):
        present = np.ones(5, bool)
        present[rows] = False
        missing[f"{m}_mask"] = present
        shape = (5,) + (1,) * (both[m].ndim - 1)
        missing[m] = np.where(present.reshape(shape), both[m], 0).astype(both[m].dtype)
    return {"both": both, "missing": missing}


@pytest.mark.parametrize("name", MODELS)
def test_runs_with_only_jax_and_numpy_and_equals_the_predictor(name, tmp_path):
    model = mmjax.load_pretrained(name)
    path = export_model(model, tmp_path / "model.jaxexport", platforms=("cpu", "cuda", "tpu"))
    meta = json.loads(zipfile.ZipFile(path).read("meta.json"))
    batches = _batches(meta["inputs"], np.random.default_rng(0))
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
    first = model.modalities[0]
    alone = dict(batches["both"])
    for m in model.modalities[1:]:
        alone[f"{m}_mask"] = np.zeros(5, bool)
        alone[m] = np.zeros_like(alone[m])
    np.testing.assert_allclose(out["first only"], model.batch_proba(alone), atol=1e-6, rtol=0)
    assert not np.allclose(out["both"], out["missing"]), first  # the masks changed the answer
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
