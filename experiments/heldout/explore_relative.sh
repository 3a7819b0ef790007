#!/usr/bin/env bash
# Next label option for the held-out experiment: rollout labels with the relative rule on the same 500 questions
# (a negative only where the candidate's 4 rollouts reach the answer at least 0.25 less often than the gold
# token's). Resumable: re-running continues train500_relative.jsonl. Run from this directory in the vLLM env.
set -euo pipefail
M=${M:-$HOME/.cache/llm2-eval/models/qwen2.5-coder-0.5b-instruct}
export LLM2_DATA_DIR=${LLM2_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2
export VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_KVCACHE_SPACE=4 VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-/tmp/vllm-cache} VLLM_RPC_BASE_PATH=/tmp
llm2 explore --backend vllm --model "$M" --data "$LLM2_DATA_DIR/gsm8k/train.jsonl" --exclude-dev --limit 500 \
  --output train500_relative.jsonl --gold self --self-samples 4 --self-max-tokens 320 --self-batch 28 --prompt task \
  --strategy rollout --label relative --margin 0.25 --min-gold-quality 0.25 --positions sample:4 --candidates 2 \
  --rollouts 4 --max-rollout-tokens 320 --dtype "${DTYPE:-bfloat16}"
