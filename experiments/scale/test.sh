#!/usr/bin/env bash
# Issue "held-out gain at full scale", steps 4-7: the test runs, once, with the verifier V and the beta B chosen on the
# decision benchmark and the dev task (dev.sh). Each run is resumable (../heldout/eval.sh: lm-eval's --use_cache, the
# sample cache for sampled requests, the trace); re-run the same command after a stop. Run from this directory.
#   B=1 ./test.sh full        GSM8K test, all 1,319 questions: greedy, then LLM2
#   B=1 ./test.sh maj8        first 300 test questions: maj@8 (T 0.7), then LLM2 + maj@8
#   B=1 ./test.sh w2s         first 300 test questions, Qwen2.5-Coder-1.5B-Instruct guided by the 0.5B's verifier
#   B=1 ./test.sh math500     MATH-500 (all 500): greedy, then LLM2 (transfer of the GSM8K verifier)
set -euo pipefail
: "${B:?set B, the beta chosen on dev (never on test)}"
V=${V:-$(cd ../.. && pwd)/verifiers/qwen2.5-coder-0.5b-gsm8k-divergence-head}
M15=${M15:-$HOME/.cache/llm2-eval/models/qwen2.5-coder-1.5b-instruct}
export RUNS=${RUNS:-runs}
case "$1" in
  full) ../heldout/eval.sh test_greedy gsm8k_llm2 1319 16 beta=0
        ../heldout/eval.sh "test_b$B" gsm8k_llm2 1319 16 "verifier=$V,beta=$B" ;;
  maj8) ../heldout/eval.sh test300_maj8 gsm8k_llm2_maj 300 16 beta=0,seed=1
        ../heldout/eval.sh "test300_maj8_b$B" gsm8k_llm2_maj 300 16 "verifier=$V,beta=$B,seed=1" ;;
  w2s)  M=$M15 ../heldout/eval.sh w2s300_greedy gsm8k_llm2 300 16 beta=0
        M=$M15 ../heldout/eval.sh "w2s300_b$B" gsm8k_llm2 300 16 "verifier=$V,beta=$B" ;;
  math500) ../heldout/eval.sh math500_greedy math500_llm2 500 16 beta=0
        ../heldout/eval.sh "math500_b$B" math500_llm2 500 16 "verifier=$V,beta=$B" ;;
  *) echo "usage: B=beta $0 full|maj8|w2s|math500" >&2; exit 2 ;;
esac
