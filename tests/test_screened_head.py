"""The int8-screened output projection: the same greedy choice as the exact one, at half the bytes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tui_chat.inference import native_kernels
from tui_chat.inference.screened_head import ScreenedHead, screen_output_projection

# 3,008 rows fit the native int8 kernel where it loads (native_kernels.py); 3,000 do not, and keep torch's.
VOCABS = pytest.mark.parametrize("vocab", [3000, 3008])


def projection(vocab: int = 3000, width: int = 96, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(width, vocab, bias=False).to(torch.bfloat16)
    with torch.no_grad():  # rows of different sizes, as a trained vocabulary has: one scale a row must cope
        layer.weight.mul_(torch.rand(vocab, 1, dtype=torch.bfloat16) * 4)
    return layer


@VOCABS
def test_greedy_choice_and_contenders_are_exact(vocab: int) -> None:
    loaded = native_kernels.load(None)
    layer = projection(vocab)
    head = ScreenedHead(layer.weight, native=True)
    assert head.native == (vocab == 3008 and loaded)
    torch.manual_seed(1)
    hidden = (torch.randn(200, 1, 1, 96) * 3).to(torch.bfloat16)
    screened_some = False
    for x in hidden:
        exact = F.linear(x, layer.weight)
        got = head(x)
        assert got.shape == exact.shape == (1, 1, vocab)
        assert got.argmax() == exact.argmax()
        assert 1 <= head.exactly_scored < vocab
        screened_some |= head.exactly_scored < 100
        # The rest keep their int8 value: close to exact, not equal everywhere (else nothing was screened).
        assert torch.allclose(got.float(), exact.float(), atol=0.5, rtol=0.02)
    assert screened_some
    assert not torch.equal(head(hidden[0]), F.linear(hidden[0], layer.weight))


@VOCABS
def test_top_logits_are_the_exact_ones(vocab: int) -> None:
    layer = projection(vocab, seed=2)
    head = ScreenedHead(layer.weight, native=True)
    x = (torch.randn(1, 96) * 2).to(torch.bfloat16)
    exact, got = F.linear(x, layer.weight)[0], head(x)[0]
    best = exact.argmax()
    assert got[best] == exact[best]


def test_several_positions_or_float32_go_exact() -> None:
    layer = projection(seed=3)
    head = ScreenedHead(layer.weight)
    several = torch.randn(4, 96).to(torch.bfloat16)
    assert torch.equal(head(several), F.linear(several, layer.weight))


def test_only_a_bias_free_bfloat16_projection_is_screened_and_tied_weights_stay_shared() -> None:
    config = LlamaConfig(
        vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    assert not screen_output_projection(model)  # float32
    model = model.to(torch.bfloat16)
    assert screen_output_projection(model)
    head = model.get_output_embeddings()
    assert isinstance(head, ScreenedHead)
    assert head.weight is model.get_input_embeddings().weight
    ids = torch.tensor([[1, 5, 9]])
    with torch.inference_mode():
        assert model(input_ids=ids, logits_to_keep=1).logits.shape == (1, 1, 500)
