"""Head training on cached encoder outputs vs end to end with the same encoders frozen.

Times the whole train step (data loading included, compilation excluded) of the emoji
two-tower model both ways and prints the medians and the speed-up:

    mmjax features extract --config configs/emoji_clip.py --out runs/emoji_features
    python tools/cached_features_speedup.py --features runs/emoji_features [--steps 50]
"""

import argparse
import statistics
import time

import jax

import mmjax
from mmjax.config import experiment_from, set_value
from mmjax.data import pipeline
from mmjax.parallel import data_mesh, put_batch
from mmjax.train.state import init_state, state_shardings
from mmjax.train.step import make_train_step


def step_times(features: str, steps: int) -> list[float]:
    config = mmjax.load_config_file("configs/emoji_clip.py")
    set_value(config, "data.features", features)
    exp = experiment_from(config.to_dict())
    mesh = data_mesh()
    graphdef, state = init_state(exp, mesh)
    step = make_train_step(graphdef, state_shardings(state, mesh), mesh)
    batches = iter(
        pipeline.train_dataset(exp.data, exp.model.modalities, exp.train.batch_size, seed=0)
    )
    times = []
    for i in range(steps + 1):
        started = time.perf_counter()
        state, metrics = step(state, put_batch(next(batches), mesh))
        jax.block_until_ready(metrics)
        if i:  # the first step compiles
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", required=True)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (percentiles need two timings)")
    medians = {}
    for name, features in (("end to end, text frozen", ""), ("cached text", args.features)):
        times = step_times(features, args.steps)
        medians[name] = statistics.median(times)
        print(
            f"{name}: median {1000 * medians[name]:.1f} ms/step "
            f"(p10 {1000 * statistics.quantiles(times, n=10)[0]:.1f}, "
            f"p90 {1000 * statistics.quantiles(times, n=10)[-1]:.1f}) over {args.steps} steps"
        )
    first, second = medians.values()
    print(f"speed-up: {first / second:.1f}x ({jax.device_count()} {jax.devices()[0].platform})")


if __name__ == "__main__":
    main()
