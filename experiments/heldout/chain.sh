#!/usr/bin/env bash
# This session's test runs, in order (beta 0.5 chosen on gsm8k_llm2_dev: 34 / 33 / 30 / 26 % at beta 0 / 0.5 / 1 / 2).
set -uo pipefail
V=${V:-ver500}
M15=$HOME/.cache/llm2-eval/models/qwen2.5-coder-1.5b-instruct
./eval.sh test300_greedy gsm8k_llm2 300 16 beta=0
./eval.sh test300_b0.5 gsm8k_llm2 300 16 verifier=$V,beta=0.5
M=$M15 ./eval.sh w2s100_greedy gsm8k_llm2 100 16 beta=0
M=$M15 ./eval.sh w2s100_b0.5 gsm8k_llm2 100 16 verifier=$V,beta=0.5
