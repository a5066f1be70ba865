"""EfficientNet-Lite0 imported onto efficientnet_lite0: the reference's logits and top-1."""

import numpy as np
import pytest
from PIL import Image

from mmjax.pretrained import catalog
from mmjax.pretrained.load import load_classifier, load_encoder

EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet-1k class indices


def _pixels(image: np.ndarray) -> np.ndarray:
    """[224, 224, 3] float32 pixel values in [0, 255]."""
    return np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR), np.float32)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="needs `pip install scikit-image`")
    return np.stack([_pixels(data.chelsea()), _pixels(data.coffee())])


@pytest.fixture(scope="module")
def logits(images) -> np.ndarray:
    encoder, classifier = load_encoder("efficientnet-lite0"), load_classifier("efficientnet-lite0")
    unit = images / 255.0  # mmjax image inputs are [0, 1]; the encoder rescales for ImageNet
    return np.asarray(classifier(encoder(unit, train=False).pooled))


def test_top1_is_cat_and_espresso(logits):
    assert logits.argmax(1).tolist() == [EGYPTIAN_CAT, ESPRESSO]


def test_logits_equal_the_pytorch_reference(images, logits):
    torch = pytest.importorskip("torch", reason="parity needs `pip install torch==2.13.0`")
    reference = pytest.importorskip(
        "efficientnet_lite_pytorch",
        reason="parity needs `pip install --no-deps efficientnet-lite-pytorch`",
    )
    torch.set_num_threads(2)
    path = catalog.weight_file(catalog.entry("efficientnet-lite0"))
    model = reference.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
    with torch.no_grad():
        scaled = (images - 127.0) / 128.0  # the reference's preprocessing
        expected = model.eval()(torch.from_numpy(scaled.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()
