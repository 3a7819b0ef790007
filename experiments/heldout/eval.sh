#!/usr/bin/env bash
# One lm-eval run of the held-out experiment: eval.sh NAME TASK LIMIT BATCH EXTRA_MODEL_ARGS
#   e.g. eval.sh dev_b1 gsm8k_llm2_dev 100 16 verifier=ver500,beta=1
# Resumable: sample_cache keeps every finished request (greedy and sampled; commit it at a sitting's end and the run
# resumes from a checkout on another machine), --use_cache the greedy ones on this machine, and the trace continues
# (see docs/evaluation.md, traces). A run whose results file exists is finished and skipped.
set -euo pipefail
. ./env.sh
NAME=$1 TASK=$2 LIMIT=$3 BATCH=$4 EXTRA=$5
RUNS=${RUNS:-runs}
mkdir -p "$RUNS/$NAME"
if compgen -G "$RUNS/$NAME/*/results_*.json" > /dev/null; then  # finished: re-running would only add a copy
  echo "$NAME: finished ($(ls "$RUNS/$NAME"/*/results_*.json | head -1)); skipped"
  exit 0
fi
lm_eval --model llm2 --model_args "pretrained=$M,dtype=bfloat16,cpu_prepack=true,trace=$RUNS/$NAME/trace.jsonl,sample_cache=$RUNS/$NAME/samples.jsonl,$EXTRA" \
  --tasks "$TASK" --limit "$LIMIT" --apply_chat_template --batch_size "$BATCH" \
  --use_cache "$RUNS/$NAME/cache" --output_path "$RUNS/$NAME" --log_samples
