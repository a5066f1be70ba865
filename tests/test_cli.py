"""The `mmjax` command end to end: data, train, eval, predict, zoo; errors exit 2 with a message."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmjax.cli import main
from mmjax.data.builders.avdigits import load_info

HUMAN_THREE = "/usr/share/asterisk/sounds/en/digits/3.wav"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def workdir(avdigits_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli_run")
    # The tiny late-fusion run of 20 steps: test_train_loop (and others) train the same program,
    # so the session's compilation cache holds it.
    code = main(
        [
            "train", "--config", "configs/avdigits_late.py:tiny", "--workdir", str(workdir),
            "--data-dir", str(avdigits_root), "--set", "train.steps=20", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return workdir


def test_zoo_list_json(capsys):
    code, out, _ = run(capsys, "zoo", "list", "--json")
    listing = json.loads(out)
    assert code == 0
    assert {"late_concat", "early_concat"} <= set(listing["fusions"])
    assert {"small_cnn", "resnet18", "cnn_lstm", "bilstm"} <= set(listing["encoders"])
    assert "avdigits" in listing["datasets"] and "avdigits_late" in listing["models"]


def test_console_script_is_installed():
    exe = shutil.which("mmjax") or str(__import__("pathlib").Path(sys.executable).parent / "mmjax")
    done = subprocess.run([exe, "zoo", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "late_concat" in done.stdout.split("fusions:")[1]


def test_train_wrote_results(workdir):
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 20 and set(results["accuracy"]) == {"val", "test", "test_human"}


def test_eval_json(capsys, workdir, avdigits_root):
    code, out, _ = run(
        capsys, "eval", "--workdir", str(workdir), "--split", "test",
        "--data-dir", str(avdigits_root), "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)["test"]
    test_records = load_info(avdigits_root)["splits"]["test"]["num_records"]
    assert 0 <= result["accuracy"] <= 1 and result["examples"] == test_records


def test_predict_on_real_files(capsys, workdir, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    three = digits.images[np.flatnonzero(digits.target == 3)[0]]
    png = tmp_path / "three.png"
    Image.fromarray((three * 255 / 16).astype(np.uint8)).resize((32, 32)).save(png)
    code, out, err = run(
        capsys, "predict", "--workdir", str(workdir), "--image", str(png),
        "--audio", HUMAN_THREE, "--json",
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    probs = answer["probabilities"]
    assert list(probs) == [str(k) for k in range(10)]  # AV-Digits' classes, in order
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert answer["prediction"] == max(probs, key=probs.get)


@pytest.mark.parametrize(
    ("flag", "content", "match"),
    [
        ("--audio", b"not a wave file", "PCM WAV"),
        ("--image", b"not an image", "not an image file"),
    ],
)
def test_predict_rejects_unreadable_files(capsys, workdir, tmp_path, flag, content, match):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    code, _, err = run(capsys, "predict", "--workdir", str(workdir), flag, str(bad))
    assert code == 2 and err.startswith("mmjax: error:") and match in err


def test_missing_dataset_exits_with_instructions(capsys, tmp_path):
    code, _, err = run(
        capsys, "train", "--config", "configs/avdigits_late.py:tiny",
        "--workdir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "empty"), "--quiet",
    )  # fmt: skip
    assert code == 2
    assert "mmjax data prepare avdigits" in err and "apt-get install espeak-ng" in err


def test_bad_set_exits_with_key(capsys, tmp_path):
    code, _, err = run(
        capsys, "train", "--config", "configs/avdigits_late.py", "--workdir", str(tmp_path),
        "--set", "train.batchsize=8",
    )  # fmt: skip
    assert code == 2 and "unknown config key 'train.batchsize'" in err


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_workdir_that_cannot_be_made_is_named(capsys, avdigits_root, tmp_path, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for bad in ("/proc/mmjax-cannot-exist/run", str(blocker / "run")):
        code, _, err = run(
            capsys, command, "--config", "configs/avdigits_late.py:tiny", "--workdir", bad,
            "--data-dir", str(avdigits_root), "--quiet",
        )  # fmt: skip
        assert code == 2 and err.startswith(f"mmjax: error: --workdir {bad}: cannot make"), err
        assert "Traceback" not in err


def test_a_log_file_gets_lines_not_a_bar(capsys, avdigits_root, tmp_path, monkeypatch):
    """stderr that is not a terminal: timestamped log lines (one per update here, with the
    interval set to 0), no carriage returns; --verbose adds debug lines, --quiet drops INFO."""
    monkeypatch.setattr("mmjax.progress.LINE_SECONDS", 0.0)
    args = ["--config", "configs/avdigits_late.py:tiny", "--workdir", str(tmp_path)]
    args += ["--data-dir", str(avdigits_root), "--set", "train.steps=20"]
    code, _, err = run(capsys, "train", *args, "--verbose")
    assert code == 0 and "\r" not in err
    lines = err.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d mmjax (INFO|DEBUG): ", x) for x in lines)
    assert f"{tmp_path}: training 20 steps from the start" in lines[0]
    assert [x.split("train: ")[1].split()[0] for x in lines if " train: " in x] == [
        f"{k}/20" for k in range(1, 21)
    ]
    assert "DEBUG: step 20: checkpoint saved" in err
    code, _, err = run(capsys, "train", *args, "--quiet")  # resumes at 20: evaluates again
    assert code == 0 and err == ""


def test_plot_writes_the_charts_of_runs(capsys, workdir, avdigits_root, tmp_path):
    out = tmp_path / "plots"
    code, _, err = run(capsys, "plot", str(workdir), "--out", str(out), "--split", "nosuch")
    assert code == 2 and "--split nosuch" in err and not out.exists()  # checked before drawing
    code, _, err = run(capsys, "plot", str(tmp_path / "none"), "--out", str(out))
    assert code == 2 and "has no metrics.jsonl" in err
    code, text, _ = run(
        capsys, "plot", str(workdir), "--out", str(out), "--data-dir", str(avdigits_root)
    )
    names = ["curves.png", f"confusion-{workdir.name}.png", "modalities.png"]
    assert code == 0 and text.split() == [x for n in names for x in ("written:", str(out / n))]
    for name in names:
        picture = np.asarray(Image.open(out / name).convert("L"), np.float32)
        assert min(picture.shape) > 250 and picture.std() > 10, name  # drawn, not blank


def test_exclusive_flags_are_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["zoo", "list", "--json", "--markdown"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_data_prepare_small(capsys, tmp_path):
    code, out, _ = run(
        capsys, "data", "prepare", "avdigits", "--small", "--data-dir", str(tmp_path)
    )
    assert code == 0 and "prepared avdigits" in out and "test_human 200" in out
    assert (tmp_path / "avdigits" / "info.json").is_file()


def test_docs_zoo_table_is_current(capsys):
    """docs/zoo.md is the output of `mmjax zoo list --markdown` (regenerate it when this fails)."""
    code, out, _ = run(capsys, "zoo", "list", "--markdown")
    assert code == 0 and out.count("\n| encoder |") >= 12 and out.count("\n| fusion |") >= 17
    with open("docs/zoo.md") as f:
        assert f.read() == out


def test_robustness_level_zero_and_removal_are_plain_evaluation(
    capsys, workdir, avdigits_root, tmp_path
):
    from mmjax.train.loop import evaluate_workdir

    out_dir = tmp_path / "curves"
    code, out, err = run(
        capsys, "robustness", "--workdir", str(workdir), "--data-dir", str(avdigits_root),
        "--out", str(out_dir), "--corruptions", "image:blur", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result == json.loads((out_dir / "robustness.json").read_text())
    root = str(avdigits_root)
    assert (
        result["clean"] == evaluate_workdir(workdir, ("test",), data_root=root)["test"]["accuracy"]
    )
    for m in ("audio", "image"):
        without = evaluate_workdir(workdir, ("test",), data_root=root, missing=(m,))
        assert result["removed"][m] == without["test"]["accuracy"]
    (curve,) = result["curves"]
    assert len(curve["accuracy"]) == 10 and curve["accuracy"][0] == result["clean"]
    below = [lv for lv, a in enumerate(curve["accuracy"]) if a < result["removed"]["image"]]
    assert curve["levels_below_removal"] == below
    assert curve["relative_robustness"] == pytest.approx(
        np.trapezoid(curve["accuracy"], np.linspace(0, 1, 10))
    )
    # Against itself as the reference, its effective robustness is zero.
    code, out, err = run(
        capsys, "robustness", "--workdir", str(workdir), "--data-dir", root, "--out",
        str(tmp_path / "again"), "--corruptions", "blur", "--reference",
        str(out_dir / "robustness.json"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["curves"][0]["effective_robustness"] == pytest.approx(0.0, abs=1e-12)
    image = np.asarray(Image.open(out_dir / "robustness.png").convert("L"), np.float32)
    assert image.shape[0] > 300 and image.shape[1] > 800 and image.std() > 10


def test_robustness_bad_arguments(capsys, workdir, tmp_path):
    cases = {
        ("--levels", "0", "10"): "--levels: [10]",
        ("--corruptions", "text:typos"): "--corruptions: 'text:typos'",
        ("--reference", str(tmp_path / "none.json")): "--reference",
        ("--model", "avdigits-late"): "not both",
        ("--split", "nope"): "nope",
    }
    for extra, message in cases.items():
        code, _, err = run(capsys, "robustness", "--workdir", str(workdir), *extra)
        assert code == 2 and message in err, (extra, err)
    code, _, err = run(capsys, "robustness")
    assert code == 2 and "got neither" in err
