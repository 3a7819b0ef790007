#!/usr/bin/env bash
# All the test runs of test.sh, one after another (each resumable: a run already finished costs only the model load
# and lm-eval's cache check). The order is the issue's: the full test set, self-consistency, weak-to-strong, MATH-500.
#   B=1 nohup ./test_all.sh > test_all.out 2>&1 &        stop: pkill -f test_all.sh; pkill -f "lm_eval --model llm2"
set -euo pipefail
: "${B:?set B, the beta chosen on dev (never on test)}"
for run in full maj8 w2s math500; do
  echo "== $(date -u +%FT%TZ) test.sh $run"
  ./test.sh "$run"
done
echo "== $(date -u +%FT%TZ) all done"
