#!/usr/bin/env bash
# Issue "held-out gain at full scale", step 2: the verifier of the recipe the decision benchmark picked (the
# first-divergence head), trained on the outcome samples of the first N questions of train_outcome_all.jsonl (default:
# all), with exactly the settings of ../decisions/curve.py's divergence-head rows (linear head, 10 epochs, head lr
# 1e-3, 10% of the records held out). Writes pairs_N.jsonl (git-ignored) and VERIFIER_DIR (default
# ../../verifiers/qwen2.5-coder-0.5b-gsm8k-divergence-head). Run from this directory (project env).
set -euo pipefail
. ./env.sh
N=${N:-100000}
OUT=${OUT:-../../verifiers/qwen2.5-coder-0.5b-gsm8k-divergence-head}
pairs=pairs_${N}.jsonl
llm2 divergence-pairs --model "$M" --data train_outcome_all.jsonl --limit "$N" --output "$pairs" --overwrite
llm2 train-verifier --model "$M" --data "$pairs" --output "$OUT" --trainable head --head linear --objective pairwise \
  --epochs 10 --head-lr 1e-3 --eval-fraction 0.1 --eval-steps 1000000000 ${OVERWRITE:+--overwrite}
