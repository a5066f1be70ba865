#!/usr/bin/env bash
# Run the benchmark suites on a GPU or TPU machine within 8 minutes, compile included, and
# write every result (JSONL, Markdown table, PNG) into OUT_DIR. Suites run most important
# first, each under the time that is left, so a slow suite cannot starve the ResNet-50 anchor.
#
#   benchmarks/run_accelerator.sh OUT_DIR [--smoke]      (--smoke: tiny sizes, any machine)
#
# Python: $PYTHON, else .venv/bin/python when it exists, else python3 (with mmjax installed
# or importable from this checkout).
set -euo pipefail
out=${1:?usage: benchmarks/run_accelerator.sh OUT_DIR [--smoke]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$out" && cd "$out" && pwd)
cd "$root"
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

budget=${BENCH_BUDGET_S:-470}  # 8 minutes less start-up and the summary
deadline=$((SECONDS + budget))
"$py" -c 'import jax; print("devices:", jax.devices())'
for suite in train extract fused checkpoint pipeline peer; do
  left=$((deadline - SECONDS))
  if ((left < 20)); then
    echo "skipped $suite: the 8-minute budget is spent"
    continue
  fi
  echo "== $suite (at most ${left} s)"
  status=0
  timeout "$left" "$py" -m mmjax.cli bench "$suite" --out "$out" "$@" || status=$?
  if ((status != 0)); then echo "suite $suite stopped with exit status $status"; fi
done

"$py" - "$out" <<'PY'
import json, pathlib, sys

lines = [json.loads(l) for f in pathlib.Path(sys.argv[1]).glob("*.jsonl") for l in f.open()]
anchor = [r for r in lines if r["suite"] == "train" and r["model"] == "resnet50"
          and r["dtype"] == "bfloat16"]
for r in anchor[-1:]:
    mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a (no peak for this device)"
    print(f"ResNet-50 bf16 train, batch {r['batch']}, {r['shapes']['image'][1]} px, "
          f"{r['mesh']}: {r['samples_per_s']:.0f} img/s, MFU {mfu} ({r['device_kind']})")
if not anchor and any(r.get("smoke") for r in lines):
    print("smoke run: ResNet-50 bf16 runs at full size only")
elif not anchor:
    print("no ResNet-50 bf16 result: see the train suite's output above")
PY
echo "results in $out"
