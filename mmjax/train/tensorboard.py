"""TensorBoard event files in WORKDIR/tb/, written with tensorboardX (no TensorFlow needed)."""

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from mmjax.train.metrics import NOT_CURVES

TB_DIR = "tb"


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch: its writer module imports torch
    when it can, only to accept torch tensors, which mmjax never passes, and that import took
    1.3 of the 1.33 s `import tensorboardX` costs every training process. A torch the process
    already imported is left alone; one imported later is unaffected."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter


class TensorBoardLog:
    """Scalars of every metrics.jsonl row (training metrics as `train/<name>`, evaluations
    during training as `<split>/<metric>`), the config as text, and the final results
    (`eval/<split>/<metric>`, the confusion matrix as an image). Only process 0 writes.

    A run resumed from the checkpoint of step S opens its writer with purge step S + 1, so
    TensorBoard drops what an earlier, interrupted call logged after S: each step shows once.
    """

    def __init__(self, workdir: Path, resumed_at: int, config: dict[str, Any]):
        self._writer = None
        if jax.process_index() != 0:
            return
        self._writer = _summary_writer_class()(
            str(Path(workdir) / TB_DIR), purge_step=resumed_at + 1, flush_secs=30
        )
        if not resumed_at:
            text = json.dumps(config, indent=2).replace("\n", "\n    ")  # Markdown code block
            self._writer.add_text("config", "    " + text, 0)

    def row(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row."""
        if self._writer is None:
            return
        for key, value in row.items():
            if key not in NOT_CURVES:
                tag = key if "/" in key else f"train/{key}"
                self._writer.add_scalar(tag, value, row["step"])

    def results(self, results: dict[str, Any], class_names: Sequence[str]) -> None:
        """A finished run's evaluation of each split at its last step."""
        if self._writer is None:
            return
        from mmjax import plots  # matplotlib: only when there is a chart to draw

        step = results["steps"]
        for split, accuracy in results.get("accuracy", {}).items():
            for metric in ("accuracy", "macro_f1", "loss"):
                self._writer.add_scalar(f"eval/{split}/{metric}", results[metric][split], step)
            figure = plots.confusion_figure(
                results["confusion"][split], class_names, f"{split}: accuracy {accuracy:.3f}"
            )
            self._writer.add_image(
                f"eval/{split}/confusion", plots.rgb(figure), step, dataformats="HWC"
            )

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
