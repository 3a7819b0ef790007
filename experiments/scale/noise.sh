#!/usr/bin/env bash
# The noise floor of the LLM2 decode (issue "held-out gain at full scale", what the traces show): a ZERO head (every
# score 0, so the verifier never changes the LLM's choice: no flips) run through the same fused path, candidates and
# batch shapes as the real head at beta 1, on the 200 dev questions. In bf16 the fused forward (candidate slots in the
# batch) rounds differently from the plain greedy forward, so near-ties between the LLM's two best tokens can go the
# other way; this run measures what that alone does against greedy (runs/dev200_greedy, dev.sh). Resumable.
#   ./noise.sh          the 200 dev questions (against runs/dev200_greedy)
#   ./noise.sh test     all 1,319 GSM8K test questions (against runs/test_greedy of test.sh full; ~2 h here), optional
set -euo pipefail
Z=$PWD/work/zero_head
. ./env.sh
[ -f "$Z/llm2_head.json" ] || llm2 init-verifier --model "$M" --output "$Z" --head-only --head-init zero
export RUNS=${RUNS:-runs}
case "${1:-dev}" in
  dev)  ../heldout/eval.sh dev200_zero_b1 gsm8k_llm2_dev 200 16 "verifier=$Z,beta=1" ;;
  test) ../heldout/eval.sh test_zero_b1 gsm8k_llm2 1319 16 "verifier=$Z,beta=1" ;;
  *) echo "usage: $0 [dev|test]" >&2; exit 2 ;;
esac
