"""Classification metrics of an evaluation, from its confusion matrix."""

from typing import Any

import numpy as np


def classification_metrics(confusion: np.ndarray) -> dict[str, Any]:
    """From `confusion` [C, C] (rows: true class, columns: predicted class; counts):

    - `accuracy`: the share of examples predicted right;
    - `per_class_accuracy` [C]: each class's recall, None for a class without examples;
    - `macro_f1`: the mean F1 (2 TP / (2 TP + FP + FN)) over the classes that occur as a label
      or a prediction, as scikit-learn's `f1_score(average="macro")` computes it.
    """
    confusion = np.asarray(confusion, np.int64)
    true_positives = np.diag(confusion)
    examples = confusion.sum(1)
    predicted = confusion.sum(0)
    occurs = (examples + predicted) > 0
    f1 = 2 * true_positives / np.maximum(examples + predicted, 1)
    return {
        "accuracy": float(true_positives.sum() / max(confusion.sum(), 1)),
        "per_class_accuracy": [
            float(tp / n) if n else None for tp, n in zip(true_positives, examples, strict=True)
        ],
        "macro_f1": float(f1[occurs].mean()) if occurs.any() else 0.0,
    }
