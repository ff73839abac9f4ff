#!/bin/bash
# Alternating A/B runs of the saturation measurement (A B A B ...), a fresh cluster each:
#   scripts/ab-saturation.sh OUT_DIR A_TREE B_TREE [ROUNDS=3] [extra profile-saturation.py options]
# A_TREE and B_TREE are checkouts (e.g. `git worktree add --detach /tmp/a main`); each run imports
# dynastore from TREE/src. Prints each run's ops/s, CPU µs per operation and p99, and their medians.
set -euo pipefail
out=$1; a=$2; b=$3; rounds=${4:-3}; shift $(( $# < 4 ? $# : 4 ))
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$out"
for i in $(seq 1 "$rounds"); do
  for side in A B; do
    tree=$a; [ "$side" = B ] && tree=$b
    PYTHONPATH=$tree/src "$python" "$here/scripts/profile-saturation.py" --no-profile --seconds 10 "$@" \
      --json "$out/$side$i.json" > /dev/null 2> "$out/$side$i.err" || echo "run $side$i failed (see $out/$side$i.err)"
  done
done
"$python" - "$out" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
for side in "AB":
    rows = {}
    for path in sorted(glob.glob(f"{out}/{side}*.json")):
        for d in json.load(open(path)):
            rows.setdefault(d["kind"], []).append((d["wrk"]["ops_s"], d["cpu_us_per_op"], d["wrk"]["p99_ms"]))
    for kind, r in rows.items():
        print(
            f"{side} {kind}: ops/s {' '.join(f'{x[0]:.0f}' for x in r)} | CPU µs/op {' '.join(f'{x[1]:.0f}' for x in r)}"
            f" | p99 ms {' '.join(f'{x[2]:.0f}' for x in r)} | median {statistics.median(x[0] for x in r):.0f} ops/s,"
            f" {statistics.median(x[1] for x in r):.0f} µs/op"
        )
PY
