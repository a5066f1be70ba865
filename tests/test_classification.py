"""Classification metrics from a confusion matrix, against scikit-learn on the same labels."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, recall_score

from mmjax.train.classification import classification_metrics


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    classes = 6
    truth = rng.integers(0, classes - 1, 200)  # the last class never occurs as a label
    predicted = np.where(rng.random(200) < 0.6, truth, rng.integers(0, classes, 200))
    if seed == 0:
        predicted[predicted == 2] = 3  # a class that is never predicted
    confusion = confusion_matrix(truth, predicted, labels=range(classes))
    metrics = classification_metrics(confusion)
    assert metrics["accuracy"] == pytest.approx(np.mean(truth == predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    recall = recall_score(truth, predicted, labels=range(classes - 1), average=None)
    assert metrics["per_class_accuracy"][:-1] == pytest.approx(recall.tolist())
    assert metrics["per_class_accuracy"][-1] is None  # no example of it


def test_empty_confusion():
    metrics = classification_metrics(np.zeros((3, 3), int))
    assert metrics == {"accuracy": 0.0, "per_class_accuracy": [None] * 3, "macro_f1": 0.0}
