#!/usr/bin/env bash
# All the test runs of test.sh, one after another (each resumable: a run already finished costs only the model load
# and lm-eval's cache check). The longest pair, self-consistency (~9 h here), runs last, so that each sitting lands
# whole pairs: the full test set, weak-to-strong, MATH-500, then maj@8.
#   B=1 nohup ./test_all.sh > test_all.out 2>&1 &        stop: pkill -f test_all.sh; pkill -f "lm_eval --model llm2"
set -euo pipefail
: "${B:?set B, the beta chosen on dev (never on test)}"
for run in full w2s math500 maj8; do
  echo "== $(date -u +%FT%TZ) test.sh $run"
  ./test.sh "$run"
done
echo "== $(date -u +%FT%TZ) all done"
