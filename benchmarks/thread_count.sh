#!/usr/bin/env bash
# The default training step with 1 and 2 torch threads, on an idle machine and next to one busy
# process (docs/training.md, "Threads"). Usage: bash benchmarks/thread_count.sh [OUT_DIR]
set -euo pipefail
out=${1:-$(mktemp -d)}
run() {  # threads label
  python -m fastlmk.train --steps 30 --no-eval --threads "$1" --log-every 10 --sample-every 0 --ckpt-every 0 \
      --out-dir "$out" --run-name "$2" > /dev/null 2>&1
  python - "$out/$2/log.csv" "$2" "$1" <<'PY'
import csv, sys
r = list(csv.DictReader(open(sys.argv[1])))
print(f"{sys.argv[2]:8s} threads={sys.argv[3]}  s/step over steps 11-30: "
      f"{(float(r[2]['elapsed_s']) - float(r[0]['elapsed_s'])) / 20:.2f}")
PY
}
run 2 idle-2; run 1 idle-1
python -c "while True: pass" & busy=$!
trap 'kill $busy' EXIT
sleep 2
run 2 busy-2; run 1 busy-1
