"""The decision benchmark: score a verifier on the decisions LLM2 actually makes, in minutes (``llm2 decisions``).

:mod:`.build` measures the value of every candidate at sampled decision points of the model's own greedy dev
solutions (rollouts); :mod:`.score` reads a verifier's scores on them and reports the decision gain per beta;
:mod:`.cli` is the ``llm2 decisions build|score`` command.
"""

from verifier_train.decisions.build import BuildConfig, DecisionsError, build_decisions

__all__ = ["BuildConfig", "DecisionsError", "build_decisions"]
