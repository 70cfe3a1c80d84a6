#!/usr/bin/env bash
# The prepared GPU check, run once on a machine with one CUDA GPU (about 8 minutes on an H100/H200):
#
#   scripts/gpu_check.sh                       # build, tests, benchmarks, training, data -> gpu_check_out/
#   scripts/gpu_check.sh --parts bench,train   # rerun only some parts (see python scripts/gpu_check.py -h)
#   scripts/gpu_check.sh --cpu-smoke           # every part on the CPU, tiny sizes: checks the script, no GPU figures
#
# Output: gpu_check_out/ (or $GPU_CHECK_OUT): summary.md, report.json, commands.txt, logs/, data/,
# console.log. Where $OUT is set (a lent machine that hands back only the few files under $OUT),
# the full report goes to /tmp/gpu_check and summary.md, report.json, gpu_check.tar.gz (all of it)
# and console.log are written into $OUT, after every part, so a run stopped from outside still
# leaves its report. PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
    dest=/tmp/gpu_check
    args=(--out "$dest" --pack "$OUT")
else
    dest=${GPU_CHECK_OUT:-gpu_check_out}
    args=(--out "$dest")
fi
mkdir -p "$dest"
"$PY" scripts/gpu_check.py "${args[@]}" "$@" 2>&1 | tee "$dest/console.log"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
    cp "$dest/console.log" "$OUT/console.log" 2>/dev/null || true
fi
exit "$rc"
