"""int4 layers for CPU decoding (tui_chat/inference/quantize.py): int4 weights for a decoded token, the bfloat16
ones for a prompt, and fused sibling projections that give exactly what separate ones give."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from tui_chat.inference import quantize
from tui_chat.inference.quantize import PROMPT_ROWS, FusedPart, Int4Linear, quantize_int4


def test_int4_linear_reads_int4_for_a_token_and_bfloat16_for_a_prompt() -> None:
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 96, bias=False, dtype=torch.bfloat16)
    layer = Int4Linear(dense)
    with torch.inference_mode():
        token = torch.randn(1, 1, 64, dtype=torch.bfloat16)
        prompt = torch.cat([token, torch.randn(1, PROMPT_ROWS - 1, 64, dtype=torch.bfloat16)], dim=1)
        exact = dense(prompt)
        assert torch.equal(layer(prompt), exact)  # a prompt: the bfloat16 weights themselves
        one = layer(token)
        assert not torch.equal(one[0, 0], exact[0, 0])  # a token: the int4 kernel, as torchao runs it
        assert torch.equal(one, torch.nn.functional.linear(token, Int4OpaqueTensor.from_hp(dense.weight, [1, 32])))
        assert torch.allclose(one[0, 0].float(), exact[0, 0].float(), atol=0.1 * exact.abs().max().item())


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def decode_logits(model: Any, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """The logits after a prompt (one forward pass) and after each decoded token (one pass each)."""
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        logits = [model(input_ids=torch.tensor([prompt]), past_key_values=cache).logits[0, -1]]
        for token in tokens:
            logits.append(model(input_ids=torch.tensor([[token]]), past_key_values=cache).logits[0, -1])
    return logits


def test_fused_projections_equal_separate_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    separate, fused = tiny_llama(), tiny_llama()
    with monkeypatch.context() as patch:
        patch.setattr(quantize, "FUSED_GROUPS", ())
        assert quantize_int4(separate) == 14  # 7 projections in each of 2 layers
    assert quantize_int4(fused) == 14
    attention, mlp = fused.model.layers[0].self_attn, fused.model.layers[0].mlp
    assert type(attention.q_proj) is FusedPart and attention.q_proj.fused is attention.v_proj.fused
    assert mlp.gate_proj.fused.out_features == 2 * 96 and type(mlp.down_proj) is Int4Linear
    prompt, tokens = list(range(3, 3 + 2 * PROMPT_ROWS)), [5, 9, 17, 33]
    expected = decode_logits(separate, prompt, tokens)
    got = decode_logits(fused, prompt, tokens)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert not attention.q_proj.outputs  # no activations kept between calls
