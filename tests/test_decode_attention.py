"""One-query attention: the output of transformers' SDPA, and the engine's models use it on CPU."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tui_chat.inference.decode_attention import NAME, one_query_attention, use_one_query_attention


def test_one_query_matches_sdpa_with_grouped_heads() -> None:
    module = torch.nn.Module().eval()
    module.num_key_value_groups = 3  # what transformers' attention modules carry for SDPA's repeat_kv
    module.is_causal = True
    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        query = torch.randn(2, 9, 1, 16, dtype=dtype)
        key, value = torch.randn(2, 3, 37, 16, dtype=dtype), torch.randn(2, 3, 37, 16, dtype=dtype)
        expected, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.25)
        got, _ = one_query_attention(module, query, key, value, None, scaling=0.25)
        assert got.shape == expected.shape == (2, 1, 9, 16)
        torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_a_model_decodes_the_same_with_it() -> None:
    config = LlamaConfig(
        vocab_size=300, hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    prompt = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.inference_mode():
        expected = model.generate(prompt, max_new_tokens=12, do_sample=False)
        assert use_one_query_attention(model)
        assert model.config._attn_implementation == NAME
        assert torch.equal(model.generate(prompt, max_new_tokens=12, do_sample=False), expected)
    assert not use_one_query_attention(model)  # already switched: only SDPA models are
