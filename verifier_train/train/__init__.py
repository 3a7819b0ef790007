"""Pairwise training of the process verifier (``llm2 train-verifier``; paper Eq. 4, docs/method.md section 6).

    L = mean over real pairs (t, gold, neg) of  -log sigmoid(s(x_<t, gold) - s(x_<t, neg))      (paper Eq. 4)

averaged over the real pairs of the whole global batch (all gradient-accumulation micro-batches and all
processes). One module per idea, TRL-style (a config dataclass, a Trainer, the loss in a small function):

- :mod:`~verifier_train.train.config`: :class:`TrainConfig`, every setting and default (the CLI is generated);
- :mod:`~verifier_train.train.data`: triplet files -> validated, packed, split solutions (:func:`load_pair_data`);
- :mod:`~verifier_train.train.loss`: :func:`pair_scores`, :func:`pairwise_loss` and the held-out metrics;
- :mod:`~verifier_train.train.trainer`: :class:`VerifierTrainer` and the log / progress callbacks;
- :mod:`~verifier_train.train.checkpoints`: the initial model, LoRA adapters, resume points, final save and dtype;
- :mod:`~verifier_train.train.run`: :func:`train_verifier`, one run end to end;
- :mod:`~verifier_train.train.cli`: the ``llm2 train-verifier`` command.

Python API: ``train_verifier(TrainConfig(model=..., data=[...], output=...))``. Command line::

    llm2 train-verifier --model LLM_DIR --data triplets.jsonl --output VERIFIER_DIR
"""

from verifier_train.train.checkpoints import cast_checkpoint
from verifier_train.train.cli import train_command
from verifier_train.train.config import CHECKPOINTS, TRAIN_LOG, TRAINING_CARD, TrainConfig, bf16_supported
from verifier_train.train.data import FileStats, PackedDataset, PairData, load_pair_data
from verifier_train.train.loss import eval_metrics, pair_scores, pairwise_loss
from verifier_train.train.run import TrainResult, train_verifier
from verifier_train.train.trainer import JsonLogCallback, RichProgressCallback, VerifierTrainer

__all__ = [
    "CHECKPOINTS", "TRAINING_CARD", "TRAIN_LOG", "FileStats", "JsonLogCallback", "PackedDataset", "PairData",
    "RichProgressCallback", "TrainConfig", "TrainResult", "VerifierTrainer", "bf16_supported", "cast_checkpoint",
    "eval_metrics", "load_pair_data", "pair_scores", "pairwise_loss", "train_command", "train_verifier",
]
