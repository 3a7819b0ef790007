#!/usr/bin/env bash
# Token quality exploration of the first 500 GSM8K train questions outside the dev slice (issue: held-out gain).
# Resumable: re-running continues train500.jsonl where it stopped. Run from this directory with the vLLM env active.
set -euo pipefail
. ./env.sh
DTYPE=${DTYPE:-bfloat16}
llm2 explore --backend vllm --model "$M" --data "$LLM2_DATA_DIR/gsm8k/train.jsonl" --exclude-dev --limit 500 \
  --output train500.jsonl --gold self --self-samples 4 --self-max-tokens 320 --self-batch 28 --prompt task \
  --strategy sample --positions all --num-samples 2 --dtype "$DTYPE"
