"""Publish a finished run as a model inside the package (mmjax/published/NAME).

python tools/publish.py --workdir runs/demo/avdigits_late --name avdigits-late
"""

import argparse

from mmjax.publish import PublishedModel, publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    folder = publish(args.workdir, args.name)
    model = PublishedModel(args.name)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"published {args.name} to {folder} ({size / 1e3:.0f} kB)")
    for split, accuracy in model.card["metrics"]["accuracy"].items():
        print(f"  {split}: card accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
