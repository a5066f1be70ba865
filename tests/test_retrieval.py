"""Retrieval metrics: recall@k against hand-checked similarity matrices."""

import numpy as np

from mmjax.train.retrieval import recall_at_k


def test_recall_at_k_counts_the_rank_of_each_match():
    similarity = np.array(
        [
            [0.9, 0.1, 0.0],  # match first
            [0.8, 0.5, 0.1],  # match second
            [0.7, 0.6, 0.2],  # match third
        ]
    )
    assert recall_at_k(similarity, ks=(1, 2, 3)) == {"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0}


def test_a_tie_counts_against_the_match():
    assert recall_at_k(np.ones((4, 4)), ks=(1, 4)) == {"R@1": 0.0, "R@4": 1.0}
