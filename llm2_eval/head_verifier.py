"""Head verifiers: a score head on the LLM's own (frozen) hidden states, saved as a few kB next to the name of its LLM.

LLM2's verifier is a copy of the LLM whose LM head is replaced by a scalar score head, read at each token's own
position (paper Sec. 2.2). A *head verifier* is the special case where the copy is not trained at all: the backbone
is the LLM itself, frozen, and only the head is trained (``llm2 train-verifier --trainable head``, on cached hidden
states: :mod:`verifier_train.train.head`). Value heads on a frozen policy are how value-guided decoding is usually
deployed (e.g. Q#, controlled decoding); they cost no second copy of the weights.

Directory format (``llm2_head.json`` marks it)::

    llm2_head.json       {"llm2_head_verifier": {"base_model": LLM path, "hidden_size": H, "head": "linear"|"mlp",
                          "mlp_hidden": M or null, "objective": ..., "dtype": ...}}
    head.safetensors     the head's weights (``linear.weight [1, H]``, ``linear.bias [1]``; or ``fc``/``out`` for mlp)
    training_card.json   how it was trained

Loading (:func:`load_head_verifier`): given the LLM it will guide and that LLM is the head's base (same path or the
same backbone weights), the verifier runs on the LLM's own backbone (one copy of the weights; its own KV cache
during decoding); otherwise the base is loaded from ``base_model``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM

from llm2_eval.loading import resolve_dtype, same_model
from llm2_eval.paths import write_dir_replacing

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

HEAD_MARKER = "llm2_head.json"
HEAD_WEIGHTS = "head.safetensors"
HEAD_KINDS = ("linear", "mlp")


class HeadVerifierError(ValueError):
    """A head-verifier directory that cannot be used; the message names the file at fault."""


def is_head_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding :data:`HEAD_MARKER`."""
    return (Path(path) / HEAD_MARKER).is_file()


class ScoreHead(torch.nn.Module):
    """The score head: ``s = w . h + b`` (``linear``) or ``s = w2 . gelu(W1 h + b1) + b2`` (``mlp``, hidden ``M``).

    Args:
        hidden_size: ``H``, the LLM's hidden size.
        kind: ``"linear"`` or ``"mlp"``.
        mlp_hidden: ``M`` for ``mlp``.
        dropout: dropout on the input hidden state while training (0 = none).

    Input ``[..., H]`` (any float dtype; computed in the head's dtype), output ``[..., 1]``.

    Raises:
        ValueError: an unknown kind, or ``mlp`` without ``mlp_hidden >= 1``.
    """

    #: :func:`llm2_eval.cpu_kernels.prepack_linears` leaves the head's layers dense (``cpu_prepack``)
    llm2_keep_dense = True

    def __init__(self, hidden_size: int, kind: str = "linear", mlp_hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head={kind!r}: use one of {', '.join(HEAD_KINDS)}")
        self.kind, self.hidden_size, self.mlp_hidden = kind, int(hidden_size), mlp_hidden
        self.drop = torch.nn.Dropout(float(dropout))
        if kind == "linear":
            self.linear = torch.nn.Linear(hidden_size, 1)
            torch.nn.init.zeros_(self.linear.weight)
            torch.nn.init.zeros_(self.linear.bias)
        else:
            if not mlp_hidden or int(mlp_hidden) < 1:
                raise ValueError("head=mlp needs mlp_hidden >= 1")
            self.fc = torch.nn.Linear(hidden_size, int(mlp_hidden))
            self.out = torch.nn.Linear(int(mlp_hidden), 1)
            torch.nn.init.zeros_(self.out.weight)
            torch.nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        p = next(self.parameters())
        h = self.drop(h.to(p.dtype))
        if self.kind == "linear":
            return self.linear(h)
        return self.out(torch.nn.functional.gelu(self.fc(h)))


class HeadVerifier(torch.nn.Module):
    """A verifier made of a causal LM's backbone and a :class:`ScoreHead` (module docstring).

    Its forward takes what a token-classification verifier takes (``input_ids``, a 2-D or 4-D ``attention_mask``,
    ``position_ids``, a KV cache as ``past_key_values`` / ``cache``) and returns an object whose ``logits``
    ``[batch, seq, 1]`` are the scores, so decoding, exploration and the decision benchmark use it unchanged.

    Args:
        llm: a causal LM; its backbone (``llm.<base_model_prefix>``) is shared, not copied, and never trained here.
        head: the trained head.
        config: the head's :data:`HEAD_MARKER` entry (kept as ``config.llm2_verifier``).
    """

    def __init__(self, llm: "PreTrainedModel", head: ScoreHead, config: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = getattr(llm, llm.base_model_prefix)
        dev = next(self.backbone.parameters()).device
        self.head = head.to(device=dev)
        self.config = llm.config
        self.head_config = dict(config or {})
        self.name_or_path = str(self.head_config.get("path", "head verifier"))
        import inspect

        params = inspect.signature(self.backbone.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's weight dtype."""
        return next(self.backbone.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The backbone's device."""
        return next(self.backbone.parameters()).device

    def get_input_embeddings(self) -> torch.nn.Module:
        """The (shared) input embeddings."""
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=None, **kwargs):
        """Scores ``s(x_<t, x_t)`` read at every position: ``logits [batch, seq, 1]`` (float32); a given KV cache
        (``cache`` / ``past_key_values``, the verifier's own) grows in place."""
        from transformers.modeling_outputs import TokenClassifierOutput

        kv = cache if cache is not None else past_key_values
        if kv is not None:
            kwargs[self._cache_kw] = kv  # the cache object is updated in place
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=use_cache, **kwargs)
        return TokenClassifierOutput(logits=self.head(out.last_hidden_state).float())


def read_head_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``llm2_head_verifier`` entry of a head directory.

    Raises:
        HeadVerifierError: an unreadable marker or weights file, or a missing field (naming the file).
    """
    marker = Path(path) / HEAD_MARKER
    try:
        cfg = json.loads(marker.read_text(encoding="utf-8"))["llm2_head_verifier"]
        for k in ("base_model", "hidden_size", "head"):
            cfg[k]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HeadVerifierError(f"{marker}: not a head-verifier marker ({err})") from None
    if not (Path(path) / HEAD_WEIGHTS).is_file():
        raise HeadVerifierError(f"{Path(path) / HEAD_WEIGHTS}: missing (the head's weights)")
    return dict(cfg, path=str(path))


def save_head(head: ScoreHead, out: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write ``head`` and its marker into directory ``out`` (created); weights in float32."""
    from safetensors.torch import save_file

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}, str(d / HEAD_WEIGHTS))
    entry = {"hidden_size": head.hidden_size, "head": head.kind, "mlp_hidden": head.mlp_hidden, **config}
    (d / HEAD_MARKER).write_text(json.dumps({"llm2_head_verifier": entry}, indent=1), encoding="utf-8")


def init_head_verifier(llm: str | os.PathLike, output_dir: str | os.PathLike, *, head_init: str = "zero",
                       seed: int = 0, overwrite: bool = False) -> Path:
    """Write an untrained linear head verifier for ``llm`` (``llm2 init-verifier --head-only``): a few kB that run on
    the LLM's own backbone (the fused step, :mod:`llm2_eval.fused`).

    A ``zero`` head scores every candidate 0, so it never changes the LLM's choice at any beta, yet it decodes
    through the same fused path, candidates and batch shapes as a trained head: LLM2 with it against greedy
    measures what the path's floating-point rounding alone does (in bf16 a near-tie can go the other way), the
    noise floor of an LLM2-vs-greedy comparison (experiments/README.md, "Full scale"). ``normal`` draws the weights
    from N(0, 1/H) (seeded): scores of about unit size, noise that moves decisions.

    Args:
        llm: local directory of the LLM (its ``config.json`` gives the hidden size ``H``; recorded as the head's
            ``base_model``).
        output_dir: directory to write: written into a new hidden sibling that then takes its place, so a crash
            leaves nothing half-written and a replaced head leaves none of its files (training card, log) behind; an
            existing non-empty one is refused unless it holds a head verifier and ``overwrite`` is given.
        head_init: ``"zero"`` or ``"normal"``.
        seed: seed of the ``normal`` init.
        overwrite: replace an existing head verifier in ``output_dir``.

    Raises:
        ValueError: an unknown ``head_init``.
        FileNotFoundError: ``llm`` is not a local directory with a ``config.json``.
        FileExistsError: ``output_dir`` is a file, or non-empty and not a head verifier (or one, without
            ``overwrite``).
    """
    from transformers import AutoConfig

    if head_init not in ("normal", "zero"):
        raise ValueError(f"head_init={head_init!r}: expected 'normal' or 'zero'")
    base = Path(llm).expanduser()
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"--model {llm}: no config.json there (a head verifier needs the local LLM directory)")
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not is_head_dir(out):
            raise FileExistsError(f"--output {out}: not an empty directory and not a head verifier; never replaced")
        if not overwrite:
            raise FileExistsError(f"--output {out}: already holds a head verifier; pass --overwrite to replace it")
    hidden = int(AutoConfig.from_pretrained(str(base)).get_text_config().hidden_size)
    head = ScoreHead(hidden, "linear")
    if head_init == "normal":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=g) / hidden ** 0.5)

    def check() -> None:  # again, just before the swap: the directory may have changed meanwhile
        if out.exists() and any(out.iterdir()) and not (overwrite and is_head_dir(out)):
            raise FileExistsError(f"--output {out}: changed while the head was written; nothing replaced")

    write_dir_replacing(out, lambda partial: save_head(
        head, partial, {"base_model": str(base.resolve()), "objective": f"untrained ({head_init} init)"}), check)
    return out


def load_head(path: str | os.PathLike) -> tuple[ScoreHead, dict[str, Any]]:
    """The trained :class:`ScoreHead` of a head directory (float32, eval mode) and its config.

    Raises:
        HeadVerifierError: see :func:`read_head_config`; weights that do not fit the declared head.
    """
    from safetensors.torch import load_file

    cfg = read_head_config(path)
    head = ScoreHead(int(cfg["hidden_size"]), str(cfg["head"]), cfg.get("mlp_hidden"))
    try:
        head.load_state_dict(load_file(str(Path(path) / HEAD_WEIGHTS)))
    except (RuntimeError, OSError) as err:
        raise HeadVerifierError(f"{Path(path) / HEAD_WEIGHTS}: does not fit the declared head "
                                f"({str(err).splitlines()[0]})") from None
    return head.eval(), cfg


def load_head_verifier(
    path: str | os.PathLike,
    *,
    llm: "PreTrainedModel | None" = None,
    dtype: "str | torch.dtype | None" = None,
    device: "str | torch.device | None" = None,
) -> HeadVerifier:
    """Load a head verifier for scoring (module docstring), in eval mode.

    Args:
        path: the head directory.
        llm: the LLM it will guide; used as the backbone when it is the head's base (same path or same backbone
            weights, :func:`llm2_eval.loading.same_model`).
        dtype, device: of a base loaded from ``base_model`` (when ``llm`` is not the base).

    Raises:
        HeadVerifierError: a bad directory, a hidden size that differs from the LLM's, or a base that cannot be
            loaded (naming it).
    """
    head, cfg = load_head(path)
    base = str(cfg["base_model"])
    if llm is None or not same_model(base, llm):
        if llm is not None:
            import logging

            logging.getLogger(__name__).warning(
                "llm2: the head verifier %s was trained on %s, not on the LLM %s: it runs on its own copy of %s",
                path, base, getattr(llm, "name_or_path", "?"), base)
        try:
            llm = AutoModelForCausalLM.from_pretrained(base, dtype=resolve_dtype(dtype)).eval()
        except OSError as err:
            raise HeadVerifierError(f"{Path(path) / HEAD_MARKER}: base_model {base} cannot be loaded "
                                    f"({str(err).splitlines()[0]})") from None
        if device is not None:
            llm.to(device)
    if int(llm.config.get_text_config().hidden_size) != int(cfg["hidden_size"]):
        raise HeadVerifierError(f"{Path(path) / HEAD_MARKER}: hidden_size {cfg['hidden_size']} does not match the "
                                f"LLM's {llm.config.get_text_config().hidden_size}")
    return HeadVerifier(llm, head, cfg).eval()
