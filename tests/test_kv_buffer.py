"""The KV buffer: the same logits as transformers' DynamicCache through prompts, decode steps, rewinds and growth."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, MistralConfig

from tui_chat.inference import decoding
from tui_chat.inference.decode_attention import use_one_query_attention
from tui_chat.inference.decoding import Decoder
from tui_chat.inference.kv_buffer import buffer_shape


def grouped_model() -> LlamaForCausalLM:
    """6 query heads over 2 key/value heads (grouped, like the bundled model's 9 over 3), on the decode attention."""
    config = LlamaConfig(
        vocab_size=300, hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=256, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    assert use_one_query_attention(model)
    return model


def logits_with_dynamic_cache(model: LlamaForCausalLM, ids: list[int], steps: list[int]) -> list[torch.Tensor]:
    """The reference: the prompt, then one token at a time, over transformers' own cache."""
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = [model(input_ids=torch.tensor([ids]), use_cache=True, cache=cache).logits[0, -1]]
        for token in steps:
            out.append(model(input_ids=torch.tensor([[token]]), use_cache=True, cache=cache).logits[0, -1])
    return out


def logits_with_decoder(decoder: Decoder, ids: list[int], steps: list[int]) -> list[torch.Tensor]:
    """The decoder's logits for the prompt and each fed token (its loop feeds ``steps`` as the chosen tokens)."""
    out: list[torch.Tensor] = []
    chosen = iter(steps)

    def choose(logits: torch.Tensor) -> int:
        out.append(logits[0].clone())
        return next(chosen, 0)

    list(decoder.tokens(ids, len(steps) + 1, choose))
    return out


def test_the_decoder_keeps_a_buffer_and_matches_the_dynamic_cache_across_turns_edits_and_growth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decoding, "MIN_STATIC_CAPACITY", 16)  # small capacities, so the conversation outgrows them
    model = grouped_model()
    decoder = Decoder(model, torch.device("cpu"), 256, compile=False)
    assert decoder.layout.kind == "buffer"
    first, reply = [5, 17, 42, 99, 7, 3], [11, 12, 13, 14, 15]
    got = logits_with_decoder(decoder, first, reply)
    torch.testing.assert_close(torch.stack(got), torch.stack(logits_with_dynamic_cache(model, first, reply)))
    cache = decoder.prompt_cache.for_prompt(first + reply)
    assert cache.capacity == 16 and cache.ids == first + reply

    # The next turn: the history is reused and the buffer grows past 16 positions with it.
    second = first + reply + [21, 22, 23, 24, 25, 26, 27, 28]
    more = [31, 32, 33, 34, 35, 36]
    got = logits_with_decoder(decoder, second, more)
    assert decoder.reused == len(first + reply)
    assert decoder.prompt_cache.for_prompt(second + more).capacity == 32
    torch.testing.assert_close(torch.stack(got), torch.stack(logits_with_dynamic_cache(model, second, more)))

    # An edit (the second message changed): the buffer keeps the common prefix and encodes the rest again.
    edited = second[:14] + [250, 251, 252, 253]
    got = logits_with_decoder(decoder, edited, [40, 41])
    assert decoder.reused == 14
    torch.testing.assert_close(torch.stack(got), torch.stack(logits_with_dynamic_cache(model, edited, [40, 41])))


def test_models_with_sliding_windows_keep_transformers_cache() -> None:
    sliding = MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    assert buffer_shape(sliding) is None
    full = LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    assert buffer_shape(full) == (3, 2, 16)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    # Without the decode attention (which reads the buffer) the decoder keeps DynamicCache.
    assert Decoder(model, torch.device("cpu"), 128, compile=False).layout.kind == "dynamic"


@pytest.mark.slow  # compiling even a tiny model takes 20-60 s of CPU here
def test_one_compiled_step_serves_every_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.utils import counters

    monkeypatch.setattr(decoding, "MIN_STATIC_CAPACITY", 16)
    threads = torch.get_num_threads()
    model = grouped_model()
    compiled = Decoder(model, torch.device("cpu"), 256, compile=True, threads=threads)
    eager = Decoder(model, torch.device("cpu"), 256, compile=False)
    compiled.warm_up(wait=True)
    assert compiled.compile_state == "ready"
    assert compiled._step_for(0) is compiled.compiled_step  # replies take the compiled step
    frames = counters["frames"]["ok"]
    ids = [5, 17, 42]
    for turn in range(4):  # capacities 32, 64, 128, 256
        ids = ids + list(range(20, 20 + 12 * (turn + 1)))
        got = logits_with_decoder(compiled, ids, list(range(50, 60)))
        torch.testing.assert_close(torch.stack(got), torch.stack(logits_with_decoder(eager, ids, list(range(50, 60)))),
                                   atol=1e-4, rtol=1e-4)
    assert compiled.prompt_cache.for_prompt(ids).capacity == 256
    assert counters["frames"]["ok"] == frames  # no reply compiled anything: the warm-up's step took every capacity
