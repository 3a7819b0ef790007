#!/usr/bin/env bash
# Outcome labels (OVM-style): 4 samples per GSM8K train question (dev slice excluded), task prompt, T 0.7, with their
# outcome. Resumable: re-running continues train_outcome.jsonl; LIMIT=N explores the first N train questions.
# Run from this directory with the vLLM env active.
set -euo pipefail
. ./env.sh
llm2 explore --backend vllm --model "$M" --data "$LLM2_DATA_DIR/gsm8k/train.jsonl" --exclude-dev --limit "${LIMIT:-500}" \
  --output train_outcome.jsonl --strategy outcome --gold self --self-samples 4 --self-max-tokens 400 --self-batch 64 \
  --prompt task --dtype "${DTYPE:-bfloat16}"
