"""Token quality exploration: verifier training data from questions with gold solutions (``llm2 explore``).

docs/method.md section 4 (paper Sec. 2.3, Eq. 5-6). For every input question the gold solution is tokenised with the
LLM's chat template; at the explored response positions, plausible non-gold candidates are drawn and rolled out,
and those whose rollouts rarely reach the gold answer become negatives ``[t, gold_id, v]`` for the verifier's
pairwise loss. One module per idea:

- :mod:`~verifier_train.explore.config`: :class:`ExploreConfig`, every setting and default;
- :mod:`~verifier_train.explore.inputs`: input lines and their parsing, shards, seeds, response positions and
  their subsampling;
- :mod:`~verifier_train.explore.labels`: candidate sets, the draws among them, the label rules (Eq. 5-6);
- :mod:`~verifier_train.explore.explorer`: the loaded models and the phases every strategy shares (self-sampled
  gold solutions, the teacher-forced forward, the record), the run's counters;
- :mod:`~verifier_train.explore.rollout`, :mod:`~verifier_train.explore.sample`,
  :mod:`~verifier_train.explore.outcome`: the strategies, each a function over a batch of examples, in phases;
- :mod:`~verifier_train.explore.batch`: one batch of examples through its phases;
- :mod:`~verifier_train.explore.models`, :mod:`~verifier_train.explore.output`: the models to load, the output
  file's checks and resume;
- :mod:`~verifier_train.explore.run`: :func:`explore`, the resumable run over a file with its summary;
- :mod:`~verifier_train.explore.shards`: the summaries of ``--shard i/N`` runs added up;
- :mod:`~verifier_train.explore.cli`: the ``llm2 explore`` command.

Python API: ``explore(ExploreConfig(model=..., data=..., output=...))``. Command line::

    llm2 explore --model LLM_DIR --data gsm8k/train.jsonl --output triplets.jsonl --positions sample:2 \\
      --candidates 2 --rollouts 4 --tau 0.5 --max-rollout-tokens 256 --dtype bfloat16
"""

from verifier_train.explore.cli import explore_command
from verifier_train.explore.config import (
    BACKENDS,
    FORMATS,
    GOLD_SOURCES,
    SAMPLE_MODES,
    STRATEGIES,
    Checker,
    ExploreConfig,
)
from verifier_train.explore.inputs import (
    BadExample,
    ExploreInputError,
    derive_seed,
    end_token_ids,
    gsm8k_solution_text,
    in_shard,
    iter_input,
    parse_example,
    parse_positions,
    parse_shard,
    response_positions,
    rollout_seed,
    select_positions,
    shard_output_path,
    summary_path,
)
from verifier_train.explore.explorer import Counters, Example, Explorer, Solution
from verifier_train.explore.labels import (
    candidate_draws,
    candidate_mask,
    default_checker,
    sample_scores,
)
from verifier_train.explore.run import explore

__all__ = [
    "BACKENDS", "FORMATS", "GOLD_SOURCES", "SAMPLE_MODES", "STRATEGIES", "BadExample", "Checker", "Counters",
    "Example", "ExploreConfig", "ExploreInputError", "Explorer", "Solution", "candidate_draws", "candidate_mask",
    "default_checker", "derive_seed", "end_token_ids", "explore", "explore_command", "gsm8k_solution_text",
    "in_shard", "iter_input", "parse_example", "parse_positions", "parse_shard", "response_positions",
    "rollout_seed", "sample_scores", "select_positions", "shard_output_path", "summary_path",
]
