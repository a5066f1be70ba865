"""Datasets: built-in builders, imports of your own data, and the grain pipeline over them."""

from mmjax.data.imports import import_folder, import_hf, import_manifest, import_tfds
from mmjax.data.sources import data_root, list_datasets

__all__ = [
    "data_root",
    "import_folder",
    "import_hf",
    "import_manifest",
    "import_tfds",
    "list_datasets",
]
