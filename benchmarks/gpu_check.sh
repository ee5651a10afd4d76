#!/usr/bin/env bash
# The GPU check of issue #18, for a machine with one CUDA GPU, torch preinstalled and no package index:
#   1. installs the project (pip install --no-deps -e packages/...), after installing from a folder of carried wheels
#      whichever runtime/test dependency is missing (GPU_CHECK_WHEELS, default benchmarks/wheels);
#   2. runs the CUDA-marked tests (the tests_cuda selection: pytest --hardware cuda);
#   3. runs the GPT-style bf16-mixed benchmark (benchmarks/gpt_cuda.py: tokens/s and peak memory, fabric vs raw);
#   4. prints one summary table. Everything within 8 minutes (each step has its own time limit).
#
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh                          # on the GPU machine
#   GPU_CHECK_FAKE=1 bash benchmarks/gpu_check.sh         # no GPU: the same pipeline on the CPU (see below)
#   bash benchmarks/gpu_check.sh --download-wheels DIR    # beforehand, where an index is reachable: fetch the wheels
#
# GPU_CHECK_FAKE=1 checks the script itself on a machine without a GPU: the CUDA-marked tests are selected and run
# (they skip: RunIf asks the fabric_utils hardware probes, the seam that override_hardware fakes in unit tests, and
# they find no GPU), and the GPT benchmark runs its toy size (gpt-tiny) on the CPU. Its numbers say nothing about a GPU.
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS, GPU_CHECK_OUT (default benchmarks/results/gpu_check).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
FAKE="${GPU_CHECK_FAKE:-0}"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/benchmarks/wheels}"
OUT="${GPU_CHECK_OUT:-$ROOT/benchmarks/results/gpu_check}"
# dependency order (the DAG of the packages); installed with --no-deps, so the order only matters for readability
PACKAGES=(fabric-utils fabric-accelerators fabric-environments fabric-io fabric-precision fabric-strategies
  fabric-loggers fabric-testing fabric-core)
# what the project needs at run time and for its tests, beyond torch (pure-Python wheels unless noted), and what
# `pip install -e` needs without build isolation (hatchling and its dependencies)
PURE_WHEELS=(click tqdm fsspec typing_extensions packaging pytest pytest-timeout pluggy iniconfig hypothesis attrs
  sortedcontainers)
BUILD_WHEELS=(hatchling pathspec trove-classifiers) # only when the project is not installed yet
PLATFORM_WHEELS=(pyyaml numpy) # binary wheels: fetch them for the GPU machine's Python version and platform

if [[ "${1:-}" == "--download-wheels" ]]; then
  dest="${2:?usage: gpu_check.sh --download-wheels DIR}"
  mkdir -p "$dest"
  "$PY" -m pip download --no-deps --only-binary=:all: -d "$dest" "${PURE_WHEELS[@]}" "${BUILD_WHEELS[@]}" \
    "${PLATFORM_WHEELS[@]}"
  exit $?
fi

mkdir -p "$OUT"
START=$(date +%s)
SUMMARY="$OUT/summary.tsv"
printf 'check\tresult\tdetail\n' >"$SUMMARY"
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$SUMMARY"; }
log() { echo "[gpu_check $(($(date +%s) - START))s] $*" >&2; }

# -- 0. the machine -------------------------------------------------------------------------------------------------
if ! TORCH_INFO=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1); then
  echo "gpu_check: torch is not importable with $PY: $TORCH_INFO" >&2
  exit 2
fi
GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' 2>/dev/null)
row "machine" "ok" "python $("$PY" -c 'import platform; print(platform.python_version())'), torch $TORCH_INFO, GPU: $GPU"
if [[ "$FAKE" != "1" && "$GPU" == "none" ]]; then
  echo "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); GPU_CHECK_FAKE=1 checks the pipeline" >&2
  exit 2
fi

# -- 1. dependencies and the project --------------------------------------------------------------------------------
missing() { # the distributions among "$@" that are not installed
  "$PY" -c 'import importlib.metadata as m, sys
def absent(name):
    try:
        m.version(name)
    except m.PackageNotFoundError:
        return True
    return False
print(" ".join(n for n in sys.argv[1:] if absent(n)))' "$@"
}
INSTALLED_HERE=$("$PY" -c "import fabric_core, sys; print(fabric_core.__file__.startswith(sys.argv[1]))" \
  "$ROOT/packages" 2>/dev/null || echo False)
NEEDED=("${PURE_WHEELS[@]}" "${PLATFORM_WHEELS[@]}")
[[ "$INSTALLED_HERE" == "True" ]] || NEEDED+=("${BUILD_WHEELS[@]}")
MISSING=$(missing "${NEEDED[@]}")
if [[ -n "$MISSING" ]]; then
  log "missing: $MISSING"
  if [[ -d "$WHEELS" ]]; then
    # shellcheck disable=SC2086  # one argument per name
    timeout 120 "$PY" -m pip install -q --no-index --find-links "$WHEELS" $MISSING >"$OUT/wheels.log" 2>&1 ||
      log "some carried wheels did not install (see $OUT/wheels.log)"
    # shellcheck disable=SC2086
    MISSING=$(missing $MISSING)
  fi
fi
row "dependencies" "$([[ -z "$MISSING" ]] && echo ok || echo "MISSING")" "${MISSING:-all present} (wheels: $WHEELS)"

PYTEST_PLUGIN=()
if [[ "$INSTALLED_HERE" == "True" ]]; then
  row "install" "ok" "already installed (editable) from this checkout"
else
  ARGS=()
  for package in "${PACKAGES[@]}"; do ARGS+=(-e "packages/$package"); done
  if timeout 180 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index "${ARGS[@]}" >"$OUT/install.log" 2>&1; then
    row "install" "ok" "pip install --no-deps --no-build-isolation -e packages/... (9 packages)"
  else
    # no build backend (hatchling) here: import the sources in place and load the pytest plugin by name
    log "pip install -e failed (see $OUT/install.log); using PYTHONPATH=packages/*/src"
    SRC=$(printf "$ROOT/packages/%s/src:" "${PACKAGES[@]}")
    export PYTHONPATH="${SRC}${PYTHONPATH:-}"
    PYTEST_PLUGIN=(-p fabric_testing.plugin)
    row "install" "fallback" "pip install -e failed ($OUT/install.log): PYTHONPATH=packages/*/src"
  fi
fi

# -- 2. the CUDA-marked tests ---------------------------------------------------------------------------------------
mapfile -t FILES < <(grep -rlE "min_cuda_gpus|bf16_cuda|mark\.cuda" packages/*/tests --include='test_*.py' | sort)
log "CUDA tests: ${#FILES[@]} files"
timeout 210 "$PY" -m pytest "${FILES[@]}" -c pyproject.toml --rootdir . --hardware cuda -q -p no:cacheprovider \
  "${PYTEST_PLUGIN[@]}" --junitxml="$OUT/cuda-tests.xml" -o junit_family=xunit2 >"$OUT/cuda-tests.log" 2>&1
TESTS_CODE=$?
TEST_COUNTS=$("$PY" - "$OUT/cuda-tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("no report"); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print(f"{n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, {n['failures']} failed, "
      f"{n['errors']} errors, {n['skipped']} skipped of {n['tests']}")
EOF
)
case $TESTS_CODE in
0) TESTS_RESULT=ok ;;
5) TESTS_RESULT="none selected" ;;
124) TESTS_RESULT="TIMED OUT" ;;
*) TESTS_RESULT=FAILED ;;
esac
row "CUDA-marked tests (--hardware cuda)" "$TESTS_RESULT" "$TEST_COUNTS; log: $OUT/cuda-tests.log"

# -- 3. the GPT benchmark -------------------------------------------------------------------------------------------
GPT_ARGS=(--reps 2 --json "$OUT/gpt.json")
[[ "$FAKE" == "1" ]] && GPT_ARGS=(--fake --quick --reps 1 --json "$OUT/gpt.json")
rm -f "$OUT/gpt.json"
(cd benchmarks && timeout 240 "$PY" gpt_cuda.py "${GPT_ARGS[@]}") >"$OUT/gpt.log" 2>&1
GPT_CODE=$?
if [[ -s "$OUT/gpt.json" ]]; then
  "$PY" - "$OUT/gpt.json" >>"$SUMMARY" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    numbers = f"raw {r['raw']}, fabric {r['fabric']}, ratio {r['ratio']}; " if r["raw"] else ""
    verdict = "not judged (fake)" if r["met"] is None else "met" if r["met"] else "MISSED"
    print(f"{r['check']}\t{verdict}\t{numbers}target {r['target']}")
EOF
else
  row "GPT bf16-mixed benchmark" "$([[ $GPT_CODE == 124 ]] && echo "TIMED OUT" || echo FAILED)" "log: $OUT/gpt.log"
fi

# -- 4. the summary ---------------------------------------------------------------------------------------------------
ELAPSED=$(($(date +%s) - START))
row "total time" "$([[ $ELAPSED -le 480 ]] && echo ok || echo "OVER")" "${ELAPSED}s (limit 480s)$([[ "$FAKE" == "1" ]] &&
  echo "; GPU_CHECK_FAKE=1: CPU only, no GPU numbers")"
echo
echo "GPU check summary ($(date -u '+%Y-%m-%d %H:%M UTC'), $([[ "$FAKE" == "1" ]] && echo "FAKE: no GPU" || echo "$GPU"))"
"$PY" - "$SUMMARY" <<'EOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter="\t"))
widths = [max(len(r[i]) for r in rows) for i in range(3)]
for n, r in enumerate(rows):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    if n == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
EOF
if grep -qP '\t(FAILED|MISSED|TIMED OUT|OVER|MISSING)\t' "$SUMMARY"; then exit 1; fi
exit 0
