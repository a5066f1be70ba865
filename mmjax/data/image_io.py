"""Reading a user's image file into the float [H, W, C] layout a model was trained on."""

from pathlib import Path

import numpy as np

from mmjax.errors import InputError


def load_image(path: str | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """PNG/JPEG/... (via Pillow) or .npy -> float32 [H, W, C] in [0, 1], resized to `shape`.

    Images are converted to grayscale when C == 1 and to RGB when C == 3. A .npy file must
    already hold float values in [0, 1] with exactly `shape`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image: file {str(path)!r} does not exist")
    height, width, channels = shape
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(f"image: {str(path)!r} is not a readable .npy file ({err})") from None
        if array.shape != tuple(shape) or array.dtype.kind != "f":
            raise InputError(
                f"image: {str(path)!r} holds {array.dtype} {array.shape}; "
                f"expected float [0, 1] of shape {tuple(shape)}"
            )
        return array.astype(np.float32)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((width, height), Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(
            f"image: {str(path)!r} is not an image file Pillow can read ({err})"
        ) from None
    array = np.asarray(image, np.float32) / 255.0
    return array.reshape(height, width, channels)
