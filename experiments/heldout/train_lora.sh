#!/usr/bin/env bash
# LoRA verifier on train500.jsonl, small enough to commit (rank 16, all linear layers, bf16 save: ~18 MB):
# the full fine-tune's recipe (zero head, head lr 50x, 2 epochs, global batch 8, bf16 autocast, 10% held out)
# with LoRA's usual higher learning rate (2e-4 instead of 5e-5). Resumable (--resume).
# Output: a PEFT adapter directory (adapter + score head + tokenizer + training_card.json + train_log.jsonl).
set -euo pipefail
. ./env.sh
OUT=${OUT:-ver500_lora}
llm2 train-verifier --model "$M" --data train500.jsonl --output "$OUT" --lora --lora-save adapter --lr 2e-4 \
  --epochs 2 --global-batch 8 --micro-batch 2 --eval-fraction 0.1 --eval-steps 11 --eval-on-start --logging-steps 2 \
  --bf16 --no-gradient-checkpointing --save-dtype bfloat16 --save-steps 11 --no-progress "$@"
