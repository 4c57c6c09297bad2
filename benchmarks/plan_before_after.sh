#!/usr/bin/env bash
# Side by side: `sweeper plan --json` of one large grid with the code of two commits, interleaved,
# each in a fresh interpreter started in its own checkout (issue 20: a 100,000-trial grid took
# minutes and 1.5 GB; `plan --json` now streams its rows and expands the grid once).
#   benchmarks/plan_before_after.sh OLD_COMMIT [TRIALS] [ROUNDS]
set -euo pipefail
old=$1; trials=${2:-100000}; rounds=${3:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d /tmp/sweeper-old-XXXX)
work=$(mktemp -d)
git -C "$here" worktree add -f "$tree" "$old" -q
trap 'git -C "$here" worktree remove --force "$tree"; rm -rf "$work"' EXIT
# seeds x lr: a plain grid of `trials` digits trials (nothing is run, only planned)
seeds=$((trials / 10))
cat > "$work/grid.py" <<PY
from sweeper import Study
study = Study(name="grid", dataset="digits",
              axes={"seed": list(range($seeds)), "lr": [0.01 * (i + 1) for i in range(10)]},
              recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none"})
PY
for i in $(seq "$rounds"); do
  for side in old new; do
    dir=$here; [ "$side" = old ] && dir=$tree
    (cd "$dir" && PYTHONPATH="$dir" /usr/bin/time -f "$side: %e s, %M KB peak" \
       python -c 'import sys; from sweeper.cli import main; sys.exit(main())' plan "$work/grid.py" --json 2>&1 >"$work/$side.json" | tail -1)
    python3 -c "import json,sys; d=json.load(open('$work/$side.json')); print('  $side trials:', d['count'], len(d['trials']))"
  done
done
