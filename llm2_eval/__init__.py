"""llm2-eval: LLM2 dual-process decoding (Yang et al., NAACL 2025, arXiv 2412.20372) for lm-evaluation-harness.

This package is imported at interpreter start-up by the ``llm2_eval_hook.pth`` hook (see
:mod:`llm2_eval.registration`), so it must stay import-light: no torch, transformers or lm_eval here.
"""

__version__ = "0.1.0"
