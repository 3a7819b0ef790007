#!/usr/bin/env bash
# Device check (GPU machine with vLLM installed): a tiny exploration with the vLLM backend, as 2 shards, then their
# summaries added up. NOT RUN with vLLM yet (no GPU was lent to the session that wrote it; docs/scaling.md); the
# script itself ran on CPU with BACKEND=hf DTYPE=float32 (22 s).
#
#   bash benchmarks/device_check_vllm.sh [WORKDIR]        # ~2-4 min, most of it vLLM's engine start (twice)
#   TP=2 bash benchmarks/device_check_vllm.sh             # tensor parallelism over 2 GPUs (--tensor-parallel-size)
#
# Passes when both shards finish, together cover the 6 questions exactly once, and `llm2 explore-shards` adds them up.
set -euo pipefail
WORK=${1:-$(mktemp -d)}
TP=${TP:-1}
BACKEND=${BACKEND:-vllm}   # BACKEND=hf DTYPE=float32: the same check without vLLM (how the script itself was tested, on CPU)
DTYPE=${DTYPE:-bfloat16}
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_NO_USAGE_STATS=1
cd "$(dirname "$0")/.."
$PY - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from tiny_models import build_tiny_llm
work = Path(sys.argv[1])
build_tiny_llm(work / "llm", seed=0)
rows = [{"question": f"Sam has {a} apples and gets {b} more. How many apples does Sam have?",
         "answer": f"{a} + {b} = {a + b}.\n#### {a + b}"} for a, b in [(3, 4), (10, 5), (7, 8), (2, 9), (6, 6), (1, 1)]]
(work / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
EOF
for i in 0 1; do
  $PY -m llm2_eval.cli explore --model "$WORK/llm" --data "$WORK/q.jsonl" --output "$WORK/out.jsonl" --shard $i/2 \
    --backend "$BACKEND" --tensor-parallel-size "$TP" --dtype "$DTYPE" --positions sample:2 --candidates 2 --rollouts 2 \
    --max-rollout-tokens 8 --no-progress
done
$PY -m llm2_eval.cli explore-shards "$WORK/out.jsonl" --shards 2 > "$WORK/merged.json"
$PY - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
ids = [json.loads(l)["id"] for i in (0, 1) for l in (work / f"out.shard{i}-of-2.jsonl").read_text().splitlines()]
merged = json.loads((work / "merged.json").read_text())
assert sorted(ids) == sorted(set(ids)) and merged["selected"] == 6 and merged["finished"], (ids, merged["selected"])
print(json.dumps({"ok": True, "records": len(ids), "rollouts": merged["rollouts"], "tokens_per_s": merged["tokens_per_s"],
                  "engine": merged["per_shard"][0]["engine"]}))
EOF
