#!/usr/bin/env bash
# Fetch here, where pip reaches PyPI, what the device machine (no package registry, no TTS
# tools) lacks to run the benchmarks, into .accelerator/ (ignored by git), for a device call
# to carry (README.md, Benchmarks):
#
#   .accelerator/wheels/  the wheels, for CPython 3.12 on manylinux x86-64, of mmjax's runtime
#                         requirements that the device image lacks and of what those require
#                         in turn (WHEELS below); about 6 MB
#   .accelerator/data/    the prepared AV-Digits dataset that the pipeline suite reads; 25 MB
#
# benchmarks/run_accelerator.sh installs the wheels there (pip --no-index --no-deps --target)
# and points MMJAX_DATA at the data, before anything imports mmjax.
#
#   bash benchmarks/accelerator_wheels.sh           fetch what is not there yet
#   bash benchmarks/accelerator_wheels.sh --list    print the package lists below and stop
#
# Python: $PYTHON, else .venv/bin/python when it exists, else python3 (its pip downloads, its
# mmjax prepares the dataset, and its installed versions are what the pins are checked against).
set -euo pipefail

# The Python packages of the device image (as its machines listed them on 2026-11-17).
DEVICE_PACKAGES="
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
"

# What the image lacks: mmjax's runtime requirements (pyproject.toml) and what they require
# in turn, pinned to the versions CI runs. tests/test_accelerator_run.py checks this list
# against the installed packages' metadata, and `import mmjax` and every suite's plan against
# the image's packages plus these wheels.
WHEELS=(
  grain==0.2.18
  array-record==0.8.6
  ml-collections==1.1.0
  portpicker==1.6.0
  tensorboardX==2.6.5
  soundfile==0.14.0
  cffi==2.1.1
  pycparser==3.12
)

# Runtime requirements left out on purpose: av (PyAV, a 36 MB wheel with FFmpeg inside, over
# half of what one device call may carry) decodes the video and compressed audio files of
# `mmjax data import` and `mmjax predict`; neither `import mmjax` nor any suite imports it.
LEFT_OUT=(av)

if [[ "${1:-}" == --list ]]; then
  printf 'wheel %s\n' "${WHEELS[@]}"
  printf 'left-out %s\n' "${LEFT_OUT[@]}"
  printf 'device %s\n' $DEVICE_PACKAGES
  exit 0
elif (($#)); then
  echo "usage: bash benchmarks/accelerator_wheels.sh [--list]" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi
wheels=.accelerator/wheels
mkdir -p "$wheels"

normal() { tr '[:upper:]_.' '[:lower:]--' <<<"$1"; }  # a distribution name, as pip compares them

"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --dest "$wheels" "${WHEELS[@]}"

# One version of each: a stale wheel beside the pinned one would stop the install there.
for file in "$wheels"/*.whl; do
  base=$(basename "$file")
  version=${base#*-}
  spec="$(normal "${base%%-*}")==${version%%-*}"
  keep=0
  for pin in "${WHEELS[@]}"; do
    [[ "$(normal "${pin%%==*}")==${pin#*==}" == "$spec" ]] && keep=1
  done
  if ((!keep)); then
    echo "removed $base: not in the pinned list"
    rm -f "$file"
  fi
done

# The pins should be what CI tests: say where this Python's packages differ.
"$py" - "${WHEELS[@]}" <<'PY'
import importlib.metadata as metadata
import sys

for pin in sys.argv[1:]:
    name, version = pin.split("==")
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        installed = "not installed"
    if installed != version:
        print(f"note: {name} is pinned to {version}, this Python has {installed}")
PY

data=.accelerator/data
mkdir -p "$data"
if [[ ! -f "$data/avdigits/info.json" ]]; then
  PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$py" -m mmjax.cli data prepare avdigits \
    --data-dir "$data" --quiet \
    || echo "note: no AV-Digits in $data, so the pipeline suite will not run on the device"
fi
echo "$(ls "$wheels"/*.whl | wc -l) wheels, $(du -sh "$wheels" | cut -f1); dataset: $(du -sh "$data" | cut -f1)"
echo "carry .accelerator in the device call (README.md, Benchmarks)"
