#!/usr/bin/env bash
# Issue "held-out gain at full scale", step 3: beta on the dev task (all 200 dev questions of GSM8K train, never
# test): greedy and LLM2 at each beta given, with the verifier V (default the committed divergence head).
#   ./dev.sh 0.5 1 2        (resumable: ../heldout/eval.sh keeps lm-eval's cache, the sample cache and the trace)
set -euo pipefail
V=${V:-$(cd ../.. && pwd)/verifiers/qwen2.5-coder-0.5b-gsm8k-divergence-head}
export RUNS=${RUNS:-runs}
../heldout/eval.sh dev200_greedy gsm8k_llm2_dev 200 16 beta=0
for b in "$@"; do
  ../heldout/eval.sh "dev200_b$b" gsm8k_llm2_dev 200 16 "verifier=$V,beta=$b"
done
