#!/usr/bin/env bash
# The decision benchmark of Qwen2.5-Coder-0.5B-Instruct on the first 100 GSM8K dev questions (vLLM CPU build, bf16).
# Resumable: re-running continues dev100.jsonl; POINTS=N extends the same seeded sample. Run from this directory
# with the vLLM env active.
set -euo pipefail
. ./env.sh
llm2 decisions build --backend vllm --model "$M" --data "$LLM2_DATA_DIR/gsm8k/train.jsonl" --output dev100.jsonl \
  --questions 100 --points "${POINTS:-300}" --rollouts 16 --alpha 0.1 --wide-alpha 0.05 --max-candidates 4 \
  --max-rollout-tokens 400 --temperature 0.7 --seed 0 --chunk "${CHUNK:-32}" --dtype "${DTYPE:-bfloat16}"
