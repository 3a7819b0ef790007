"""The process verifier (System 2): create, load, and pair it with an LLM.

Checkpoint format (docs/method.md section 2): a plain transformers token-classification checkpoint with one label
(``AutoModelForTokenClassification``, ``num_labels=1``, classifier dropout 0), saved as safetensors together with
its tokenizer. The score ``s(x_<t, v)`` of token ``v`` is the head's output at the position of ``v`` itself.
Anyone can load such a checkpoint without this package. A LoRA verifier may instead be a PEFT adapter directory on
its base model's weights (:mod:`llm2_eval.adapters`); :func:`load_verifier` takes both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from llm2_eval.adapters import is_adapter_dir, load_adapter_verifier
from llm2_eval.head_verifier import is_head_dir, load_head_verifier
from llm2_eval.loading import build_verifier, head_name, resolve_dtype
from llm2_eval.paths import (check_model_path, check_not_an_input, is_hub_id, is_llm2_checkpoint, resolved,
                             write_dir_replacing)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TokenizerMismatchError(ValueError):
    """The LLM and the verifier do not share a tokenizer vocabulary (docs/method.md section 2)."""


def init_verifier(
    llm: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: "str | torch.dtype | None" = None,
    seed: int = 0,
    head_init: str = "zero",
    overwrite: bool = False,
) -> Path:
    """Create an untrained verifier from a causal LM and save it (docs/method.md section 2).

    The verifier has the LLM's architecture and weights, with its LM head replaced by a new linear head
    ``hidden_size -> 1`` on the final normed hidden state (a 1-label token-classification model, dropout 0).

    Args:
        llm: local directory (or hub id, when reachable) of any ``AutoModelForCausalLM`` checkpoint.
        output_dir: directory to write; created if missing. Written atomically (a temporary sibling is renamed
            at the end), so a crash never leaves a half-written verifier. An existing non-empty directory is
            refused unless ``overwrite``, and even then only one that holds an llm2 checkpoint
            (:func:`llm2_eval.paths.is_llm2_checkpoint`) is replaced.
        dtype: dtype of the saved weights (default: the LLM's).
        seed: seed for the new head's random initialisation (the only random part).
        head_init: ``"zero"`` (the default: all scores 0, so until trained the verifier changes no decision at any
            beta) or ``"normal"`` (transformers' default random init of a new head: noise that moves decisions).
        overwrite: replace an existing llm2 checkpoint in ``output_dir``.

    Returns:
        The output directory.

    Raises:
        FileExistsError: ``output_dir`` is not empty (without ``overwrite``), holds something other than an llm2
            checkpoint, or is a file; checked before anything is read or written.
        FileNotFoundError: ``llm`` is a local path that does not exist.
        OSError: when the LLM cannot be loaded from ``llm``.
        ValueError: when transformers has no token-classification class for the architecture, or for an
            unknown ``head_init``.
    """
    if head_init not in ("normal", "zero"):
        raise ValueError(f"head_init={head_init!r}: expected 'normal' or 'zero'")
    out = resolved(output_dir)
    check_model_path(llm, "--model")
    check_not_an_input(out, {"--model": llm})
    _check_replaceable(out, overwrite)
    model = build_verifier(llm, dtype=dtype, seed=seed, zero_head=head_init == "zero")
    tokenizer = AutoTokenizer.from_pretrained(str(llm))
    model.config.llm2_verifier = {"base_model": str(llm), "head": head_name(model), "num_labels": 1}

    def write(partial: Path) -> None:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)

    write_dir_replacing(out, write, lambda: _check_replaceable(out, overwrite))
    return Path(output_dir)


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse to replace ``out`` unless it is missing, an empty directory, or (with ``overwrite``) an llm2
    checkpoint (see :func:`init_verifier`)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"--output {out}: is a file, not a directory; choose another output")
    if not any(out.iterdir()):
        return
    if not is_llm2_checkpoint(out):
        raise FileExistsError(
            f"--output {out}: the directory is not empty and holds no llm2 checkpoint; it is never replaced "
            "(choose a new or empty directory)"
        )
    if not overwrite:
        raise FileExistsError(f"--output {out}: already holds an llm2 checkpoint; pass --overwrite to replace it")


def load_verifier(
    path: "str | os.PathLike | PreTrainedModel",
    *,
    dtype: "str | torch.dtype | None" = None,
    device: "str | torch.device | None" = None,
    attn_implementation: str | None = "sdpa",
    llm: "PreTrainedModel | None" = None,
) -> "PreTrainedModel":
    """Load a verifier checkpoint, or a verifier adapter directory, for scoring (eval mode).

    Args:
        path: verifier directory (format above), a PEFT adapter directory (``llm2 train-verifier --lora
            --lora-save adapter``, :mod:`llm2_eval.adapters`), a head-verifier directory (``--trainable head``,
            :mod:`llm2_eval.head_verifier`), or an already loaded token-classification model.
        dtype: weight dtype (see :func:`llm2_eval.loading.resolve_dtype`); default the checkpoint's.
        device: where to put it; default CPU.
        attn_implementation: ``"sdpa"`` or ``"eager"``; decoding passes 4-D attention masks, which
            flash-attention does not accept.
        llm: the LLM the verifier will guide (adapters only): when it is the adapter's base, the verifier shares
            its weights (one copy in memory, adapters enabled only inside verifier forwards;
            :class:`llm2_eval.adapters.SharedBaseVerifier`).

    Returns:
        An ``AutoModelForTokenClassification`` (or a :class:`~llm2_eval.adapters.SharedBaseVerifier`) whose
        ``logits[..., 0]`` are the scores, shape ``[batch, seq]``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the checkpoint does not have exactly one label;
            :class:`llm2_eval.adapters.AdapterError` (a ValueError) for a bad adapter directory, naming the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        model = path
    elif not Path(path).exists() and not is_hub_id(str(path)):
        raise FileNotFoundError(f"verifier checkpoint not found: {path}")
    elif is_head_dir(path):
        model = load_head_verifier(path, llm=llm, dtype=dtype, device=device)
        check_finite_weights(model.head, path)  # the backbone is the LLM itself
        return model
    elif is_adapter_dir(path):
        model = load_adapter_verifier(path, llm=llm, dtype=dtype, device=device,
                                      attn_implementation=attn_implementation)
        check_finite_weights(model, path)
        return model
    else:
        model = _load_checkpoint(path, dtype, attn_implementation)
    if getattr(model.config, "num_labels", None) != 1:
        raise ValueError(
            f"verifier {getattr(path, 'name_or_path', path)} has num_labels={model.config.num_labels}; "
            "an LLM2 verifier is a token-classification model with exactly one label"
        )
    check_finite_weights(model, getattr(path, "name_or_path", path))
    if device is not None:
        model.to(device)
    model.eval()
    return model


def _load_checkpoint(path: "str | os.PathLike", dtype: Any, attn_implementation: str | None) -> "PreTrainedModel":
    """A verifier checkpoint directory or hub id as saved (:func:`load_verifier`'s plain case).

    Raises:
        FileNotFoundError: ``path`` is not a local directory and cannot be loaded from the hub.
    """
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForTokenClassification.from_pretrained(str(path), **kwargs)
    except OSError as err:
        if Path(path).exists():
            raise
        raise FileNotFoundError(
            f"verifier checkpoint not found: {path} is not a local directory and could not be loaded from the "
            f"hub ({err})"
        ) from err


def check_finite_weights(model: "torch.nn.Module", name: Any) -> None:
    """Refuse a verifier whose weights hold NaN or infinite values (a damaged checkpoint: every score would be NaN,
    and decoding would silently fall back to the LLM's choices).

    Raises:
        ValueError: one line naming the verifier and the first such parameter.
    """
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if param.is_floating_point() and not bool(torch.isfinite(param).all()):
                raise ValueError(f"verifier {name}: the weight {pname} holds NaN or infinite values (a damaged "
                                 "checkpoint); retrain it or load another one")


def check_tokenizers_compatible(
    llm_tokenizer: "PreTrainedTokenizerBase",
    verifier_tokenizer: "PreTrainedTokenizerBase",
    *,
    llm_name: str = "LLM",
    verifier_name: str = "verifier",
) -> None:
    """Refuse to pair an LLM and a verifier whose tokenizers differ (docs/method.md section 2).

    Candidates are token ids proposed by the LLM and scored by the verifier, so both must map every id to the
    same string. Models of one family with different embedding-matrix sizes but the same vocabulary pass.

    Raises:
        TokenizerMismatchError: naming both models and the first differing token.
    """
    a, b = llm_tokenizer.get_vocab(), verifier_tokenizer.get_vocab()
    if a == b:
        return
    only_a = sorted(set(a) - set(b), key=lambda t: a[t])
    only_b = sorted(set(b) - set(a), key=lambda t: b[t])
    moved = sorted((t for t in set(a) & set(b) if a[t] != b[t]), key=lambda t: a[t])
    detail = []
    if only_a:
        detail.append(f"{len(only_a)} tokens only in the {llm_name} tokenizer (first: {only_a[0]!r} id {a[only_a[0]]})")
    if only_b:
        detail.append(
            f"{len(only_b)} tokens only in the {verifier_name} tokenizer (first: {only_b[0]!r} id {b[only_b[0]]})"
        )
    if moved:
        t = moved[0]
        detail.append(f"{len(moved)} tokens with different ids (first: {t!r} is {a[t]} vs {b[t]})")
    raise TokenizerMismatchError(
        f"the {llm_name} and the {verifier_name} do not share a tokenizer vocabulary ({len(a)} vs {len(b)} "
        f"entries): {'; '.join(detail)}. A verifier can only guide an LLM with the same tokenizer."
    )


def verifier_scores(verifier_output: Any) -> "torch.Tensor":
    """Scores from a verifier forward: ``logits[..., 0]`` in float32, shape ``[batch, seq]`` (docs/method.md section 1)."""
    return verifier_output.logits[..., 0].float()
