#!/usr/bin/env bash
# The CUDA path of vostool, checked in one command (issue 15), in under 8 minutes on one
# H100/H200:
#
#   scripts/gpu-check.sh [RESULTS_DIR]        (default: $OUT, else gpu-check-<UTC time>)
#
# 1. installs vostool with its test extra into the current Python (pip install -e ".[test]";
#    offline machines: falls back to --no-build-isolation --no-deps when torch is already there);
# 2. runs the tests marked `cuda` (tests/test_cuda.py: segment, eval, bench and training steps
#    in fp16 and bf16, CUDA vs CPU masks, flat memory over 1,000 frames);
# 3. runs `vostool bench --all --device cuda --json` and renders its table.
#
# Everything lands in RESULTS_DIR: env.txt (GPU, driver, torch), install.log, pytest-cuda.txt
# (+ junit XML), bench-cuda.jsonl (+ .txt table, .err), summary.txt (one line per step with its
# exit status and seconds). Exit status: 0 when every step passed.
#
# GPU_CHECK_DEVICE=cpu dry-runs the same steps on the CPU (small bench) to check the script
# itself where no GPU is available; GPU_CHECK_SKIP_INSTALL=1 skips step 1 (an installed checkout).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${1:-${OUT:-$ROOT/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
PY="${PYTHON:-python}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
cd "$ROOT"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
FAILED=0

step() {  # step NAME TIMEOUT_S CMD...: run, time, record the exit status
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS rc
    echo "== $name ($(date -u +%T))" >&2
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local dt=$((SECONDS - t0))
    if [ "$rc" -eq 0 ]; then
        echo "ok      $name (${dt}s)" >> "$SUMMARY"
    else
        [ "$rc" -eq 124 ] && note=" (timed out after ${limit}s)" || note=""
        echo "FAILED  $name: exit $rc$note (${dt}s)" >> "$SUMMARY"
        FAILED=1
    fi
    return "$rc"
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(hostname)"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo '?')"
    echo "device under test: $DEVICE"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -V
} > "$RESULTS/env.txt" 2>&1

# -- 1. install ----------------------------------------------------------------------------
INSTALL='"$0" -m pip install -e ".[test]" || {
    echo "pip install -e .[test] failed (offline?): again without build isolation or dependencies"
    "$0" -m pip install --no-build-isolation --no-deps -e . && "$0" -c "import torch, pytest, vostool"; }'
if [ -n "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
    echo "skipped   install (GPU_CHECK_SKIP_INSTALL)" >> "$SUMMARY"
else
    step install 300 bash -c "$INSTALL" "$PY" > "$RESULTS/install.log" 2>&1
fi

"$PY" - >> "$RESULTS/env.txt" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu:", p.name, f"{p.total_memory / 2**30:.0f} GiB", "bf16:", torch.cuda.is_bf16_supported())
EOF
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "FAILED  no CUDA GPU visible to torch (see env.txt)" >> "$SUMMARY"
    cat "$SUMMARY"
    echo "results: $RESULTS"
    exit 2
fi

# -- 2. the tests marked cuda ----------------------------------------------------------------
TEST_ENV=()
[ "$DEVICE" = cpu ] && TEST_ENV=(env VOSTOOL_TEST_CUDA_ON=cpu)
TEST_LIMIT=300
[ "$DEVICE" = cpu ] && TEST_LIMIT=1200  # the CPU dry run is far slower
step "pytest -m cuda" "$TEST_LIMIT" "${TEST_ENV[@]}" "$PY" -m pytest -m cuda tests/test_cuda.py -v -rs \
    --junitxml="$RESULTS/pytest-cuda.xml" > "$RESULTS/pytest-cuda.txt" 2>&1
tail -n 3 "$RESULTS/pytest-cuda.txt"

# -- 3. bench --all on the device ------------------------------------------------------------
BENCH=(--all --device "$DEVICE" --json)
[ "$DEVICE" = cpu ] && BENCH+=(--size 64 --frames 2 --warmup 1 --no-e2e)
step "vostool bench ${BENCH[*]}" 240 "$PY" -m vostool bench "${BENCH[@]}" \
    > "$RESULTS/bench-$DEVICE.jsonl" 2> "$RESULTS/bench-$DEVICE.err"
"$PY" - "$RESULTS/bench-$DEVICE.jsonl" > "$RESULTS/bench-$DEVICE.txt" 2>&1 <<'EOF'
import dataclasses, json, sys
from rich.console import Console
from vostool.bench import BenchResult, conditions_lines, results_table

fields = {f.name for f in dataclasses.fields(BenchResult)}
rows = []
for line in open(sys.argv[1]):
    if line.strip():
        d = json.loads(line)
        for k in ("internal_hw", "padded_hw", "source_hw"):
            d[k] = tuple(d[k])
        rows.append(BenchResult(**{k: v for k, v in d.items() if k in fields}))
out = Console(width=220, file=sys.stdout)
if rows:
    out.print(results_table(rows))
    for line in conditions_lines(rows):
        out.print(line, highlight=False, soft_wrap=True)
else:
    print("no bench rows")
EOF
cat "$RESULTS/bench-$DEVICE.txt"

echo
cat "$SUMMARY"
echo "results: $RESULTS"
exit "$FAILED"
