#!/usr/bin/env bash
# GPU check, for a session lent a GPU: the CUDA tests and the three benchmark suites on the GPU, in under
# 5 minutes (every step has its own time limit), then a short table.
#
#   bash benchmarks/gpu_check.sh
#
# Needs only an installed PyTorch with CUDA (plus numpy; pytest for the tests, else they are reported as
# not run); installs nothing. The package is found through PYTHONPATH=src. Results are appended to
# benchmarks/results/gpu-check-<UTC time>.jsonl (and the console output to a .log next to it); when $OUT
# names a folder (the device runner's output folder), both files are copied there.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p benchmarks/results
RESULTS="benchmarks/results/gpu-check-$STAMP.jsonl"
LOG="benchmarks/results/gpu-check-$STAMP.log"
exec > >(tee "$LOG") 2>&1
START=$SECONDS
STATUS=0

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: nothing to check"
    exit 1
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'device', torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# tqdm only draws progress bars, but redr.data imports it; without it, use a silent stand-in for this run.
if ! "$PY" -c "import tqdm" 2>/dev/null; then
    STUBS="$(mktemp -d)"
    mkdir -p "$STUBS/tqdm"
    printf 'class tqdm:\n    def __init__(self, iterable=None, *a, **k): self.iterable = iterable\n    def __iter__(self): return iter(self.iterable or ())\n    def update(self, *a, **k): pass\n    def set_postfix(self, *a, **k): pass\n    def close(self): pass\n    def __enter__(self): return self\n    def __exit__(self, *a): pass\n' > "$STUBS/tqdm/__init__.py"
    echo "from tqdm import tqdm" > "$STUBS/tqdm/auto.py"
    export PYTHONPATH="$PYTHONPATH:$STUBS"
    echo "note: tqdm is not installed; a silent stand-in is used for this run"
fi

step() {  # step LIMIT_SECONDS COMMAND...: run with a time limit, report its status and duration
    local limit=$1; shift
    local t0=$SECONDS
    echo
    echo "=== $* (limit ${limit}s)"
    timeout --kill-after=5 "$limit" "$@"
    local rc=$?
    echo "=== exit $rc after $((SECONDS - t0))s$([ $rc -eq 124 ] && echo ' (time limit: partial results kept)')"
    [ $rc -eq 0 ] || STATUS=1
}

if "$PY" -c "import pytest" 2>/dev/null; then
    step 75 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests
else
    echo "pytest is not installed: the CUDA tests were NOT run"
    STATUS=1
fi
step 35 "$PY" -m redr bench layer --device cuda --repeats 10 --warmup 3 --json "$RESULTS"
step 100 "$PY" -m redr bench epoch --device cuda --densities 0.1 --higgs-rows 64000 --json "$RESULTS"
step 75 "$PY" -m redr bench memory --device cuda --densities 0.1 --jobs 2 --worker-timeout 60 --json "$RESULTS"

echo
echo "=== summary ($((SECONDS - START))s in all)"
if [ -s "$RESULTS" ]; then
    "$PY" -m redr bench summary "$RESULTS" || STATUS=1
else
    echo "no results were written"
    STATUS=1
fi
echo "results: $RESULTS  log: $LOG"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$RESULTS" "$LOG" "$OUT"/ 2>/dev/null || true
fi
exit $STATUS
