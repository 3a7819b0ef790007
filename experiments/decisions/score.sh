#!/usr/bin/env bash
# Score verifiers on the decision benchmark: ./score.sh OUT.json VERIFIER... (the project's env; minutes on CPU).
set -euo pipefail
. ./env.sh
out=$1; shift
args=()
for v in "$@"; do args+=(--verifier "$v"); done
llm2 decisions score --benchmark dev100.jsonl --model "$M" --dtype bfloat16 --betas 0.25,0.5,1,2,4,8 "${args[@]}" \
  --output "$out"
