#!/usr/bin/env bash
# Token quality exploration of the first 500 GSM8K train questions outside the dev slice (issue: held-out gain).
# Resumable: re-running continues train500.jsonl where it stopped. Run from this directory with the vLLM env active.
set -euo pipefail
M=${M:-$HOME/.cache/llm2-eval/models/qwen2.5-coder-0.5b-instruct}
DTYPE=${DTYPE:-bfloat16}
export LLM2_DATA_DIR=${LLM2_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2
export VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_KVCACHE_SPACE=4 VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-/tmp/vllm-cache} VLLM_RPC_BASE_PATH=/tmp
llm2 explore --backend vllm --model "$M" --data "$LLM2_DATA_DIR/gsm8k/train.jsonl" --exclude-dev --limit 500 \
  --output train500.jsonl --gold self --self-samples 4 --self-max-tokens 320 --self-batch 28 --prompt task \
  --strategy sample --positions all --num-samples 2 --dtype "$DTYPE"
