#!/usr/bin/env bash
# Run the benchmark suites on a GPU or TPU machine within one 8-minute budget, start-up and
# compilation included, and write every result (JSONL, Markdown table, PNG) and this script's
# log (run.log) into OUT_DIR.
#
#   benchmarks/run_accelerator.sh OUT_DIR [--smoke] [--dry-run]
#
# --dry-run  list what each suite will measure (model, variant, batch, dtype) with a time
#            estimate and the share of the budget it would get; measures nothing
# --smoke    tiny sizes, on any machine
#
# What the device image lacks travels in .accelerator/ (benchmarks/accelerator_wheels.sh
# makes it): its wheels are installed with pip --no-index --no-deps --target into a temporary
# folder put on PYTHONPATH, and its data/ becomes MMJAX_DATA (unless that is set), before
# anything imports mmjax. Without that folder the machine must have everything already.
#
# First the dry run: the plan with its estimates, and the check that everything imports; a
# suite that cannot run here (its data missing) is left out. Then the suites, one process
# each, most important first: each may use one part of the time left, shared among the
# suites still to run (train, which holds the ResNet-50 anchor, two parts), so what a suite
# leaves unused goes to the ones after it and none can starve the rest. A suite over its
# share is stopped; what it measured stays, as each measurement is appended to the JSONL when
# it is made, and the table and chart are written from the JSONL at the end.
#
# Python: $PYTHON, else .venv/bin/python when it exists, else python3. Budget: BENCH_BUDGET_S
# (default 480) seconds from the start, of which the last 30 are kept for the summary.
set -euo pipefail
started=$SECONDS
usage="usage: benchmarks/run_accelerator.sh OUT_DIR [--smoke] [--dry-run]"
out=${1:?$usage}
shift
size=()
dry_run=0
for arg in "$@"; do
  case $arg in
    --smoke) size=(--smoke) ;;
    --dry-run) dry_run=1 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$out" && cd "$out" && pwd)
cd "$root"
exec > >(tee -a "$out/run.log") 2>&1
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi

carried=$root/.accelerator
if compgen -G "$carried/wheels/*.whl" >/dev/null; then
  # The carried wheels of the distributions this Python lacks (none on a developer's .venv).
  mapfile -t lacking < <("$py" - "$carried"/wheels/*.whl <<'PY'
import importlib.metadata
import os
import sys

for path in sys.argv[1:]:
    try:
        importlib.metadata.distribution(os.path.basename(path).split("-")[0])
    except importlib.metadata.PackageNotFoundError:
        print(path)
PY
  )
  if ((${#lacking[@]})); then
    site=$(mktemp -d)
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
      --target "$site" "${lacking[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed from .accelerator/wheels: $(basename -a "${lacking[@]}" | cut -d- -f1-2 | xargs)"
  fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${MMJAX_DATA:-}" && -f "$carried/data/avdigits/info.json" ]]; then
  export MMJAX_DATA=$carried/data
fi

budget=${BENCH_BUDGET_S:-480}
deadline=$((started + budget - 30))
plan=$(mktemp)
trap 'rm -f "$plan"' EXIT
if ! "$py" -m mmjax.cli bench train extract fused checkpoint pipeline peer --dry-run \
  --out "$out" "${size[@]}" | tee "$plan"; then
  echo "the dry run failed, so no suite can start; for a missing module, run"
  echo "benchmarks/accelerator_wheels.sh where pip works and carry .accelerator along"
  exit 1
fi
suites=()
declare -A estimate=()
for pair in $(sed -n 's/^estimates://p' "$plan"); do
  suites+=("${pair%%=*}")
  estimate[${pair%%=*}]=${pair#*=}
done

# The share of suites[i] in the time left: one part for each suite from i on, two for train.
parts() { [[ $1 == train ]] && echo 2 || echo 1; }
share() {
  local rest=0 name
  for name in "${suites[@]:$1}"; do rest=$((rest + $(parts "$name"))); done
  echo $(((deadline - SECONDS) * $(parts "${suites[$1]}") / rest))
}

if ((dry_run)); then
  echo "budget: $((deadline - SECONDS)) s left for the suites; shares if each takes its estimate:"
  for i in "${!suites[@]}"; do
    seconds=$(share "$i")
    used=$((seconds < estimate[${suites[$i]}] ? seconds : estimate[${suites[$i]}]))
    echo "  ${suites[$i]}: $seconds s"
    deadline=$((deadline - used))
  done
  exit 0
fi

for i in "${!suites[@]}"; do
  suite=${suites[$i]}
  seconds=$(share "$i")
  if ((seconds < 20)); then
    echo "skipped $suite: $((deadline - SECONDS)) s left of the budget"
    continue
  fi
  echo "== $suite: at most $seconds s (estimate ${estimate[$suite]} s)"
  status=0
  timeout -k 5 "$seconds" "$py" -m mmjax.cli bench "$suite" --out "$out" "${size[@]}" \
    || status=$?
  case $status in
    0) ;;
    124 | 137) echo "$suite stopped at its share: its finished measurements are kept" ;;
    *) echo "$suite stopped with exit status $status" ;;
  esac
done

rm -rf "$out"/checkpoint-* "$out"/pipeline_metrics.jsonl  # what a stopped suite left behind
results=("$out"/*.jsonl)
if [[ -e "${results[0]}" ]]; then
  "$py" -m benchmarks.report "${results[@]}"
fi
echo "results in $out ($((SECONDS - started)) s)"
