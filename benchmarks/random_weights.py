"""Random weights with a real model's shape: for timing where the real weights cannot travel (a lent GPU machine).

Only the checkpoint's ``config.json`` and tokenizer files are needed. The timings of a forward pass do not depend
on the values of the weights; what does is the work the decoder chooses, so benchmarks that use this pin it
(``--top-k`` candidates every step, EOS ignored, a fixed number of new tokens).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def materialize(model_dir: str, seed: int = 0) -> str:
    """Write a randomly initialised copy of ``model_dir`` (same config and tokenizer) and return its path.

    Args:
        model_dir: a transformers causal-LM directory; its weight files are not read and may be absent.
        seed: torch seed of the initialisation.

    Returns:
        Path of a temporary directory holding the random checkpoint (fp32 safetensors) and the tokenizer.

    Raises:
        OSError: ``model_dir`` has no readable ``config.json`` or tokenizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    out = Path(tempfile.mkdtemp(prefix="llm2-random-")) / Path(model_dir).name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
