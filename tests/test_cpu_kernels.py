"""Prepacked oneDNN linear layers (llm2_eval.cpu_kernels, the ``cpu_prepack`` model arg)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm2_eval.cpu_kernels import PrepackedLinear, prepack_linears, prepack_supported
from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.verifier import load_verifier

pytestmark = pytest.mark.skipif(prepack_supported(torch.float32) is not None,
                                reason="this torch build has no oneDNN linear ops")


def test_prepacked_linear_matches_f_linear_for_any_leading_shape():
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40)
    packed = PrepackedLinear(lin)
    for shape in [(1, 24), (3, 5, 24), (2, 1, 7, 24)]:
        x = torch.randn(shape)
        assert torch.allclose(packed(x), lin(x), atol=1e-5, rtol=1e-5)
        assert packed(x).shape == (*shape[:-1], 40)
    assert packed.weight is None and "packed" not in dict(packed.named_buffers())


def test_models_keep_their_outputs_and_output_embedding(tiny_llm, tiny_verifier):
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    ver = load_verifier(tiny_verifier, dtype="float32")
    ids = torch.randint(0, 300, (2, 11))
    with torch.inference_mode():
        want_logits, want_scores = llm(ids).logits, ver(ids).logits
        n_llm, n_ver = prepack_linears(llm), prepack_linears(ver)
        got_logits, got_scores = llm(ids).logits, ver(ids).logits
    layers = llm.config.num_hidden_layers
    assert n_llm == 7 * layers + 1 and n_ver == 7 * layers + 1  # q k v o gate up down per layer + head/score
    assert not any(type(m) is torch.nn.Linear for m in llm.modules())
    assert llm.get_output_embeddings().weight is not None  # readers of the (tied) output embedding still work
    assert torch.allclose(got_logits, want_logits, atol=1e-4)
    assert torch.allclose(got_scores, want_scores, atol=1e-4)
    assert prepack_linears(llm) == 0  # idempotent: nothing left to pack


def test_llm2_decoding_with_prepacked_models_matches_the_dense_path(tiny_llm, tiny_verifier):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    tok.padding_side = "left"
    enc = tok(["how many apples", "she buys 12 eggs and"], return_tensors="pt", padding=True)
    cfg = DecodeConfig(alpha=0.3, beta=4.0, max_new_tokens=12, eos_token_ids=())

    def run(pack):
        llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
        ver = load_verifier(tiny_verifier, dtype="float32")
        if pack:
            prepack_linears(llm), prepack_linears(ver)
        out = generate(llm, enc.input_ids, enc.attention_mask, cfg, verifier=ver, tokenizer=tok)
        return out.tokens, sum(s.flips for s in out.stats)

    dense, packed = run(False), run(True)
    assert packed == dense and dense[1] > 0  # the verifier changed decisions, and the same ones


def test_refuses_what_it_cannot_pack_naming_the_layer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.float16))
    with pytest.raises(ValueError, match=r"layer 0: weights of dtype torch.float16"):
        prepack_linears(model)
    assert type(model[0]) is torch.nn.Linear  # nothing replaced


@pytest.mark.skipif(prepack_supported(torch.bfloat16) is None, reason="this CPU prepacks bfloat16")
def test_bfloat16_without_avx512_is_refused():
    with pytest.raises(ValueError, match="bfloat16"):
        prepack_linears(torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.bfloat16)))


def test_lm_eval_model_arg(tiny_llm, tiny_verifier):
    from lm_eval.api.registry import get_model

    from test_lm_eval_model import PROMPTS, requests

    # lm_eval's CLI passes device=cuda:0 by default; HFLM falls back to the CPU where there is no GPU
    device = "cpu" if torch.cuda.is_available() else "cuda:0"

    def make(**args):
        return get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=2, device=device,
                                 verifier=str(tiny_verifier), beta=4.0, alpha=0.3, **args)

    want = make().generate_until(requests(PROMPTS))
    m = make(cpu_prepack="true")
    assert any(isinstance(x, PrepackedLinear) for x in m.model.modules())
    assert any(isinstance(x, PrepackedLinear) for x in m.verifier.modules())
    assert m.generate_until(requests(PROMPTS)) == want
    with pytest.raises(ValueError, match="cpu_prepack='maybe'"):
        make(cpu_prepack="maybe")


def test_lora_layers_stay_dense_and_outputs_are_kept(tiny_llm):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        want = model(ids).logits
        n = prepack_linears(model)
        got = model(ids).logits
    tuner = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert tuner and all(type(m.base_layer) is torch.nn.Linear for m in tuner)  # the adapters' layers untouched
    assert n == 5 * model.config.num_hidden_layers + 1  # k o gate up down per layer + the head
    assert torch.allclose(got, want, atol=1e-4)


def test_lm_eval_refuses_a_dtype_it_cannot_pack_before_loading(tmp_path):
    from lm_eval.api.registry import get_model

    # the model directory does not even exist: the dtype is refused first
    with pytest.raises(ValueError, match="cpu_prepack=true with dtype=float16"):
        get_model("llm2")(pretrained=str(tmp_path / "none"), dtype="float16", cpu_prepack=True)


def test_grouped_query_attention_without_repeated_heads_is_exact(tiny_verifier):
    from transformers import DynamicCache

    from llm2_eval.cpu_kernels import GQA_ATTENTION, use_gqa_attention

    ver = load_verifier(tiny_verifier, dtype="float32")  # sdpa; grouped key/value heads (4 query, 2 kv heads)
    assert ver.config.num_key_value_heads < ver.config.num_attention_heads
    b, s, q = 2, 9, 3
    ids, new = torch.randint(0, 300, (b, s)), torch.randint(0, 300, (b, q))
    mask = torch.zeros(b, 1, q, s + q)
    mask[:, :, :, s:] = torch.where(torch.eye(q, dtype=torch.bool), 0.0, float("-inf"))  # candidates see themselves
    pos = torch.arange(s, s + q)[None].expand(b, -1)

    def scores():
        cache = DynamicCache()
        with torch.inference_mode():
            ver(input_ids=ids, past_key_values=cache, use_cache=True)
            return ver(input_ids=new, past_key_values=cache, use_cache=True, position_ids=pos, attention_mask=mask).logits

    want = scores()
    assert use_gqa_attention(ver) and ver.config._attn_implementation == GQA_ATTENTION
    assert torch.allclose(scores(), want, atol=1e-6)
    assert not use_gqa_attention(ver)  # no longer sdpa: left as it is


def test_head_verifier_with_prepacking_keeps_its_head_and_decodes_the_same(tiny_llm, tmp_path):
    """``cpu_prepack=true`` with a head verifier on the LLM's own backbone (the fused path): the backbone is packed
    once, the score head stays dense (it reads its own dtype from its weights), and the text is the dense path's."""
    from lm_eval.api.registry import get_model

    from llm2_eval.head_verifier import ScoreHead, save_head
    from test_lm_eval_model import PROMPTS, requests

    torch.manual_seed(5)
    head = ScoreHead(AutoModelForCausalLM.from_pretrained(tiny_llm).config.hidden_size, "mlp", 8)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=2.0)  # a head that moves decisions
    save_head(head, tmp_path / "head", {"base_model": str(tiny_llm)})

    def make(**args):
        return get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=2, device="cpu",
                                 verifier=str(tmp_path / "head"), beta=4.0, alpha=0.3, **args)

    dense = make()
    want = dense.generate_until(requests(PROMPTS))
    packed = make(cpu_prepack="true")
    assert any(isinstance(x, PrepackedLinear) for x in packed.model.modules())
    assert all(type(x) is torch.nn.Linear for x in packed.verifier.head.children() if not isinstance(x, torch.nn.Dropout))
    assert packed.generate_until(requests(PROMPTS)) == want
    assert sum(s.flips for s in dense.last_decode.stats) > 0  # the head changed decisions, and the same ones
