"""Evaluation during training: which split and metric a run watches, its best value so far,
and when to stop early (`train.eval_every`, `train.keep_best`, `train.early_stop_patience`)."""

import dataclasses
from typing import Any

from mmjax.config import KEEP_BEST_METRICS, TrainConfig

BEST_DIR = "best"  # WORKDIR/best/: the checkpoint that scored best on train.keep_best
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False}
LOGGED = KEEP_BEST_METRICS  # logged as "<split>/<metric>" at each evaluation


def watched_split(train: TrainConfig) -> str:
    """The split evaluated during training: keep_best's, else "val"."""
    return train.keep_best.split("/")[0] if train.keep_best else "val"


@dataclasses.dataclass
class Watch:
    """The best value of `train.keep_best` so far, its step, and the evaluations since it.
    Saved in every checkpoint's metrics, so a resumed run goes on exactly as if unbroken."""

    best: float | None = None
    best_step: int = 0
    since_best: int = 0
    stopped: bool = False  # early stopping ended the run

    def observe(self, step: int, values: dict[str, float], train: TrainConfig) -> bool:
        """Take an evaluation's `values` at `step`; True if it is a new best."""
        metric = train.keep_best.split("/")[1]
        value = values[metric]
        higher = HIGHER_IS_BETTER[metric]
        improved = self.best is None or (value > self.best if higher else value < self.best)
        if improved:
            self.best, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1
        patience = train.early_stop_patience
        self.stopped = bool(patience) and self.since_best >= patience
        return improved

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> "Watch":
        return cls(**record) if record else cls()

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
