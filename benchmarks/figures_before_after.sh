#!/usr/bin/env bash
# Side by side: `sweeper figures` of one store with the code of two commits, interleaved, each in a
# fresh interpreter started in its own checkout (so `python -m` imports that checkout's sweeper).
#   benchmarks/figures_before_after.sh STORE OLD_COMMIT [ROUNDS]
# Make a store first, e.g.  python -c "from sweeper.bench.figures import generate_store; generate_store('/tmp/figstore')"
set -euo pipefail
store=$1; old=$2; rounds=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d /tmp/sweeper-old-XXXX)
git -C "$here" worktree add -f "$tree" "$old" -q
trap 'git -C "$here" worktree remove --force "$tree"; rm -rf "$out"' EXIT
out=$(mktemp -d)
for i in $(seq "$rounds"); do
  for side in old new; do
    dir=$here; [ "$side" = old ] && dir=$tree
    rm -rf "$out"/*
    (cd "$dir" && PYTHONPATH="$dir" /usr/bin/time -f "$side %e s %M KB peak" python -m sweeper.cli figures "$store" --out "$out" 2>&1 >/dev/null | tail -1)
  done
done
