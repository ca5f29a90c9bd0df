"""Attention for one new token at a time: two small matmuls instead of torch's CPU flash-attention kernel.

A decode step attends one query to every cached position. torch's CPU SDPA kernel does that in blocks built for many
queries, and its cost grew with the history far faster than the bytes it reads: with a long chat it took most of
each decoded token, where ``softmax(q @ K^T) @ V`` takes a tenth of its time (same output within bfloat16 rounding;
`python -m bench decode` prints decode speed by history length). Prompts (many queries at once) and masked or
training calls keep transformers' SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tui_chat.inference.kv_buffer import buffer_attention

NAME = "sdpa_one_query"


def one_query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    kv_buffer: tuple[torch.Tensor, torch.Tensor] | None = None,
    kv_window: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: ``query`` ``[batch, heads, q_len, dim]``, ``key``/``value``
    ``[batch, kv_heads, length, dim]``; returns ``[batch, q_len, heads, dim]``. With ``kv_buffer`` (the model called
    over a ``KVBuffer``, kv_buffer.py) the history lives in the buffer and ``key``/``value`` are this call's part."""
    if kv_buffer is not None and kv_window is not None:
        return buffer_attention(module, query, key, value, kv_buffer, kv_window, scaling)
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or attention_mask is not None or module.training or heads % kv_heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    # Query heads are grouped by the key/value head they share (transformers' repeat_kv order), so one matmul per
    # key/value head covers its whole group.
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (dim**-0.5 if scaling is None else scaling)
    weights = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    output = torch.matmul(weights, value).reshape(batch, heads, 1, dim)
    return output.transpose(1, 2), None


def use_one_query_attention(model: Any) -> bool:
    """Switch ``model`` (loaded with transformers' SDPA attention) to ``one_query_attention``; returns whether it did.
    Models on other attention implementations, or that cannot switch, keep theirs."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, one_query_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as SDPA (none for one query, no padding)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError):  # a model whose code does not go through AttentionInterface
        return False
    return True
