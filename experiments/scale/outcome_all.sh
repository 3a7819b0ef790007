#!/usr/bin/env bash
# Issue "held-out gain at full scale", step 1: the chosen label source (outcome samples, from which the
# first-divergence pairs are derived) on all GSM8K train questions outside the dev slice (~7,270), 4 samples each,
# exactly the settings of ../decisions/outcome.sh. Starts from a copy of the committed 512 questions
# (../decisions/train_outcome.jsonl) and continues; resumable (re-run the same command); LIMIT=N stops at N questions.
# The output (~5 KB per question, ~36 MB in all) is git-ignored; each run's wall time and counts are appended to
# sittings.log (committed). Run from this directory with the vLLM env active.
set -euo pipefail
. ./env.sh
out=train_outcome_all.jsonl
# the first 512 questions may already exist (../decisions/outcome.sh, same settings): start from them when present
if [ ! -e "$out" ] && [ -e ../decisions/train_outcome.jsonl ]; then cp ../decisions/train_outcome.jsonl "$out"; fi
start=$(date -u +%FT%TZ); before=$(wc -l < "$out")
llm2 explore --backend vllm --model "$M" --data "$LLM2_DATA_DIR/gsm8k/train.jsonl" --exclude-dev --limit "${LIMIT:-100000}" \
  --output "$out" --strategy outcome --gold self --self-samples 4 --self-max-tokens 400 --self-batch 64 \
  --prompt task --dtype "${DTYPE:-bfloat16}" || status=$?
echo "$start -> $(date -u +%FT%TZ): $before -> $(wc -l < "$out") questions (exit ${status:-0}; summary: $out's .summary.json)" >> sittings.log
exit "${status:-0}"
