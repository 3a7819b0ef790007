#!/usr/bin/env bash
# Verifier training on train500.jsonl: the positive control's recipe (zero head, head lr 50x, lr 5e-5), full
# fine-tune in bf16 autocast, 10% of the records held out for pair accuracy. Resumable (--resume).
# The committed LoRA verifier (../../verifiers/qwen2.5-coder-0.5b-gsm8k500-lora/): LoRA's usual higher learning rate,
#   OUT=ver500_lora LR=2e-4 ./train.sh --lora --lora-save adapter
# Another training set: DATA=train500_relative.jsonl OUT=... ./train.sh ...
set -euo pipefail
. ./env.sh
OUT=${OUT:-ver500}
LR=${LR:-5e-5}
DATA=${DATA:-train500.jsonl}
llm2 train-verifier --model "$M" --data "$DATA" --output "$OUT" --lr "$LR" --epochs 2 --global-batch 8 \
  --micro-batch 2 --eval-fraction 0.1 --eval-steps 11 --eval-on-start --logging-steps 2 --bf16 \
  --no-gradient-checkpointing --save-dtype bfloat16 --save-steps 11 --no-progress "$@"
