#!/usr/bin/env bash
# Next label option for the held-out experiment: rollout labels with the relative rule on the same 500 questions
# (a negative only where the candidate's 4 rollouts reach the answer at least 0.25 less often than the gold
# token's). Resumable: re-running continues train500_relative.jsonl. Run from this directory in the vLLM env.
set -euo pipefail
. ./env.sh
llm2 explore --backend vllm --model "$M" --data "$LLM2_DATA_DIR/gsm8k/train.jsonl" --exclude-dev --limit 500 \
  --output train500_relative.jsonl --gold self --self-samples 4 --self-max-tokens 320 --self-batch 28 --prompt task \
  --strategy rollout --label relative --margin 0.25 --min-gold-quality 0.25 --positions sample:4 --candidates 2 \
  --rollouts 4 --max-rollout-tokens 320 --dtype "${DTYPE:-bfloat16}"
