"""Shared fixtures: tiny random models built locally once per test session (nothing is downloaded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import build_tiny_llm  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the lm_eval subprocesses

import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a loaded machine extra threads slow every op down a lot.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Every test module runs torch on one thread, restored after it (a module whose code calls
    ``torch.set_num_threads``, e.g. exploration's ``threads`` option, cannot leak its setting into the next)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local data directory ($LLM2_DATA_DIR, default ../shared/data next to the repository)."""
    d = Path(os.environ.get("LLM2_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (d / "gsm8k" / "test.jsonl").exists():
        raise FileNotFoundError(f"test data not found in {d}: set LLM2_DATA_DIR to the shared data directory")
    return d


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A random 2-layer Qwen2 LM with a 300-token BPE tokenizer and a chat template."""
    return build_tiny_llm(tmp_path_factory.mktemp("tiny") / "llm", seed=0)


@pytest.fixture(scope="session")
def tiny_verifier(tiny_llm, tmp_path_factory) -> Path:
    """An untrained verifier initialised from ``tiny_llm`` with a random head (``llm2 init-verifier``'s code
    path, ``--head-init normal``: its scores are not all zero, so it changes decisions)."""
    from llm2_eval.verifier import init_verifier

    return init_verifier(tiny_llm, tmp_path_factory.mktemp("tiny") / "verifier", seed=1, head_init="normal")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random Llama LM with peaky next-token distributions (many single-candidate steps)."""
    return build_tiny_llm(tmp_path_factory.mktemp("tiny") / "llama", arch="llama", seed=3, head_scale=4.0)
