"""Prepacked linear layers for CPU inference: the LLM's and the verifier's ``nn.Linear`` weights reordered once
into oneDNN's blocked layout, so each forward skips the per-call weight packing of a plain GEMM.

Why: on a CPU, decoding multiplies a few rows (the batch, or a verifier's candidate slots) by every weight
matrix. A plain ``F.linear`` repacks the whole weight on each call, which for a handful of rows costs more than
the arithmetic: on a 2-core AVX2 machine a ``[16, 896] x [896, 4864]`` product takes 7.0 ms with ``F.linear``
and 3.0 ms with a prepacked weight, and a 0.5B model's batch-16 decode step 887 -> 438 ms (``benchmarks/decode.py
--prepack`` and benchmarks/README.md have the measured decode numbers). The kernels are torch's own (oneDNN, the ops
that torch's inductor uses for the same purpose); this module only swaps the modules.

With a multi-token query and a mask (the verifier's candidate forwards), transformers' SDPA path repeats the
key/value heads of a grouped-query model to the query heads' count before attention (a copy of the whole KV cache
per layer: 2 -> 14 heads for Qwen2.5-0.5B); :func:`use_gqa_attention` hands SDPA the key/value heads as they are
(``enable_gqa``), the same numbers without the copy (a verifier forward of 8 rows x 4 tokens over 300 cached
columns: ~25% faster here).

Results agree with ``F.linear`` to float32 rounding (a different summation order: logits differ by ~1e-4 on
a 0.5B model), so greedy tokens can differ at exact near-ties; the default decoding path does not use it.

    from llm2_eval.cpu_kernels import prepack_linears
    prepack_linears(llm); prepack_linears(verifier)      # after loading, on CPU, for inference only

In lm-eval: ``--model llm2 --model_args pretrained=...,verifier=...,cpu_prepack=true``.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

__all__ = ["GQA_ATTENTION", "PrepackedLinear", "prepack_linears", "prepack_supported", "use_gqa_attention"]

#: the name under which :func:`use_gqa_attention` registers its attention function with transformers
GQA_ATTENTION = "llm2_sdpa_gqa"


def prepack_supported(dtype: torch.dtype) -> str | None:
    """Why ``dtype`` weights cannot be prepacked on this machine, or ``None`` when they can.

    float32 needs torch's oneDNN ops; bfloat16 also needs a CPU with AVX512 (BW/VL/DQ) or AVX-NE-CONVERT.
    """
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")):
        return "this torch build has no oneDNN linear ops"
    if dtype == torch.float32:
        return None
    if dtype == torch.bfloat16:
        return None if ops._is_mkldnn_bf16_supported() else "this CPU has no oneDNN bfloat16 support (AVX512 needed)"
    return f"weights of dtype {dtype} (only float32 and bfloat16)"


class PrepackedLinear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` prepacked for oneDNN: a drop-in inference replacement of one ``nn.Linear``.

    Args:
        linear: the layer to replace (CPU, float32 or bfloat16). Its weight is copied into the packed layout;
            when ``keep_weight`` the dense ``weight`` stays reachable as ``.weight`` (for tied output embeddings,
            which the model's ``get_output_embeddings()`` users read), else it is dropped with the old module.
        keep_weight: keep ``.weight`` (see above).

    Shapes: input ``[..., in_features]`` -> output ``[..., out_features]``, in the weight's dtype.

    The packed weight is a plain attribute, not a parameter or buffer: no gradients, not in ``state_dict``, not
    moved by ``.to()``. Prepack after the model has its final device and dtype.
    """

    def __init__(self, linear: torch.nn.Linear, keep_weight: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.weight = linear.weight if keep_weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output ``[..., out_features]`` for ``x`` ``[..., in_features]``."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def prepack_linears(model: torch.nn.Module) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` by a :class:`PrepackedLinear`, in place; returns how many.

    Layers inside peft LoRA layers (``base_layer`` of a tuner layer, the LoRA matrices) stay as they are, so a
    verifier that shares the LLM's backbone (:class:`llm2_eval.adapters.SharedBaseVerifier`) keeps working; the
    model's output embedding keeps its dense ``.weight`` (tied to the input embedding in most small LLMs). Modules
    that set ``llm2_keep_dense = True`` keep their layers dense too: a head verifier's score head
    (:class:`llm2_eval.head_verifier.ScoreHead`, a ``[H] -> [1]`` product that prepacking cannot speed up, in its own
    dtype).

    Raises:
        ValueError: a weight that is not on the CPU, or a dtype this machine cannot prepack
            (:func:`prepack_supported`), naming the layer.
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is optional: without it there are no tuner layers to skip
        BaseTunerLayer = ()  # noqa: N806
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    todo = []
    for name, parent in model.named_modules():
        if (BaseTunerLayer and isinstance(parent, BaseTunerLayer)) or getattr(parent, "llm2_keep_dense", False):
            continue
        for child_name, child in parent.named_children():
            if type(child) is not torch.nn.Linear or "lora_" in f"{name}.{child_name}":  # peft's LoRA matrices
                continue
            where = f"{name}.{child_name}".lstrip(".")
            if child.weight.device.type != "cpu":
                raise ValueError(f"prepack: layer {where} is on {child.weight.device}; prepacking is for CPU models")
            why = prepack_supported(child.weight.dtype)
            if why is not None:
                raise ValueError(f"prepack: layer {where}: {why}; load the model in float32 or leave prepacking off")
            todo.append((parent, child_name, child))
    for parent, child_name, child in todo:
        setattr(parent, child_name, PrepackedLinear(child, keep_weight=child is out_emb))
    return len(todo)


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, but a masked grouped-query call passes the key/value heads to SDPA as they
    are (``enable_gqa=True``) instead of repeating them. Shapes: query ``[batch, heads, q, head_dim]``, key and
    value ``[batch, kv_heads, k, head_dim]``, mask ``[batch, 1, q, k]``; returns ``([batch, q, heads, head_dim],
    None)`` as every transformers attention function."""
    if attention_mask is None or key.shape[1] == query.shape[1] or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def use_gqa_attention(model: torch.nn.Module) -> bool:
    """Switch a transformers model that runs ``sdpa`` attention to :data:`GQA_ATTENTION` (registered with
    transformers' ``AttentionInterface`` and, for its masks, ``AttentionMaskInterface`` as SDPA's), in place;
    returns whether it switched. Other kernels (eager, flash) and modules without ``set_attn_implementation``
    (e.g. :class:`llm2_eval.adapters.SharedBaseVerifier`, whose backbone is the LLM's) are left as they are.
    Meant for CPU: on CUDA a masked ``enable_gqa`` call can fall back to SDPA's slow math kernel."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    AttentionInterface.register(GQA_ATTENTION, _sdpa_gqa)
    AttentionMaskInterface.register(GQA_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GQA_ATTENTION)
    return True
