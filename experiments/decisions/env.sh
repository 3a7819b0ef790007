# Sourced by the scripts here: the model, the data and the offline / thread / vLLM CPU settings they share.
M=${M:-$HOME/.cache/llm2-eval/models/qwen2.5-coder-0.5b-instruct}
export LLM2_DATA_DIR=${LLM2_DATA_DIR:-$(cd ../../.. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2
export VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_KVCACHE_SPACE=4 VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-/tmp/vllm-cache} VLLM_RPC_BASE_PATH=/tmp
