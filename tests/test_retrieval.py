"""Retrieval metrics: recall@k against hand-checked similarity matrices."""

import numpy as np

from mmjax.pretrained.load import tokenize
from mmjax.train.retrieval import _class_name_prompts, recall_at_k


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


def test_class_name_prompts_carry_the_tokenizers_attention_mask():
    info = {
        "class_names": ["Flags", "the [PAD] class"],
        "text_vocab": {"tokenizer": "minilm-l6", "length": 16},
    }
    prompts = _class_name_prompts(info)
    assert set(prompts) == {"text", "text.attention_mask"}
    ids, mask = tokenize("minilm-l6", info["class_names"], length=16)
    np.testing.assert_array_equal(prompts["text"], ids)
    np.testing.assert_array_equal(prompts["text.attention_mask"], mask)
    assert prompts["text.attention_mask"][1, 2] and prompts["text"][1, 2] == 0  # "[PAD]" is text
