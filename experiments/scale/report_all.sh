#!/usr/bin/env bash
# The reports of the test runs of test.sh, for every pair whose two runs have finished (project env; run from this
# directory): `llm2 report LLM2 BASE --baseline BASE -o report_NAME` (paired difference, won / lost, sign test,
# flips, compute); for the maj@8 pair, `maj_ties.py BASE LLM2 > maj_ties_NAME.md` (how much hangs on the vote's
# tie-break); for the greedy pairs, `where_flips.py BASE LLM2 --by-flips > where_flips_NAME.md` (where the responses
# part; first sample of each question). Gzipped samples files (committed that way) are unpacked beside themselves
# first.
#   B=1 ./report_all.sh
set -euo pipefail
: "${B:?set B, the beta of the test runs}"
done_run() { compgen -G "runs/$1/*/results_*.json" > /dev/null; }
for pair in "test test_greedy test_b$B" "maj8 test300_maj8 test300_maj8_b$B" "w2s w2s300_greedy w2s300_b$B" \
            "math500 math500_greedy math500_b$B"; do
  read -r name base run <<< "$pair"
  if ! done_run "$base" || ! done_run "$run"; then echo "$name: not finished ($base, $run)"; continue; fi
  for gz in runs/"$base"/*/samples_*.jsonl.gz runs/"$run"/*/samples_*.jsonl.gz; do
    [ -e "$gz" ] && [ ! -e "${gz%.gz}" ] && gunzip -k "$gz"
  done
  llm2 report "runs/$run" "runs/$base" --baseline "runs/$base" -o "report_$name" > /dev/null
  if [ "$name" = maj8 ]; then  # sampled runs: where_flips compares single greedy responses, not k samples
    { echo "# How much of maj@8 vs LLM2 + maj@8 hangs on the vote's tie-break"; echo
      echo "\`python maj_ties.py runs/$base runs/$run\`"; echo
      python maj_ties.py "runs/$base" "runs/$run"; } > "maj_ties_$name.md"
    echo "$name: report_$name/report.md, maj_ties_$name.md"; continue
  fi
  { echo "# Where LLM2 at beta $B parts from its baseline: $name"; echo
    echo "\`python where_flips.py runs/$base runs/$run --by-flips\`"; echo
    python where_flips.py "runs/$base" "runs/$run" --by-flips; } > "where_flips_$name.md"
  echo "$name: report_$name/report.md, where_flips_$name.md"
done
