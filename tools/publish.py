"""Publish a finished run as a model inside the package (mmjax/published/NAME), with
`mmjax.save_pretrained`.

python tools/publish.py --workdir runs/demo/avdigits_late --name avdigits-late
    [--small-build DATA_ROOT] [--noise-curves]

--small-build records the model's accuracy on every split of the `--small` build of its
dataset under DATA_ROOT (with that build's checksums) in the card's "small_build", so a
cheap test can reproduce the card on a fresh small build.

--noise-curves (AV-Digits models) adds to the card's metrics "noise_scales": accuracy on
`test` and `test_human` with both inputs and with each alone, at noise scales from clean to the
dataset's default (tools/never_loses.py's measurement), and draws them in the model's
curves.png: whether the fused model ever loses to its best single input.
"""

import argparse
import json
from pathlib import Path

from never_loses import measure_copy, plot, summarise
from noise_scales import SCALES

from mmjax.config import DataConfig
from mmjax.data import sources
from mmjax.publish import PUBLISHED_DIR, PretrainedModel, save_pretrained
from mmjax.train.workdir import read_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--small-build", help="data root holding the dataset's --small build")
    parser.add_argument(
        "--noise-curves",
        action="store_true",
        help="AV-Digits: card metrics and curves.png at noise scales from clean to the default",
    )
    args = parser.parse_args()
    curves = None
    if args.noise_curves:
        data_root = read_experiment(args.workdir)["config"]["data"]["root"]
        curves = measure_copy(Path(args.workdir), str(sources.data_root(data_root)))
    extra = {"noise_scales": {"scales": list(SCALES), **curves}} if curves else None
    folder = save_pretrained(args.workdir, PUBLISHED_DIR / args.name, card={"metrics": extra or {}})
    if curves:
        plot({args.name: summarise([curves])}, folder / "curves.png")
    model = PretrainedModel(folder)
    if args.small_build:
        dataset = model.card["config"]["data"]["name"]
        source = sources.open_source(DataConfig(name=dataset, root=args.small_build))
        if not source.info.get("build", {}).get("small", source.info.get("small")):
            raise SystemExit(f"--small-build {args.small_build}: {dataset} there is not --small")
        model.card["small_build"] = {
            "dataset_build": source.build_checksums(),
            "accuracy": {
                split: model.evaluate(split, data_root=args.small_build)["accuracy"]
                for split in source.info["splits"]
            },
        }
        (folder / "card.json").write_text(json.dumps(model.card, indent=2) + "\n")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"published {args.name} to {folder} ({size / 1e3:.0f} kB)")
    for split, accuracy in model.card["metrics"]["accuracy"].items():
        print(f"  {split}: card accuracy {accuracy:.4f}")
    for split, accuracy in model.card.get("small_build", {}).get("accuracy", {}).items():
        print(f"  {split} of the small build: {accuracy:.4f}")


if __name__ == "__main__":
    main()
