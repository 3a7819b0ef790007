"""The training side of LLM2: token quality exploration (``llm2 explore``) and verifier training
(``llm2 train-verifier``). May import :mod:`llm2_eval`; never imported by it."""
