"""A preallocated KV cache for decoding on CPU, and the attention that reads it in place.

transformers' ``DynamicCache`` grows by concatenation: every decoded token copies each layer's whole history into a
new tensor, and the compiled step has sixty cache tensors to guard, read and hand back. ``KVBuffer`` holds every
layer's keys (and values) in one tensor allocated for ``capacity`` positions; a step writes its new row in place and
attention reads the rows so far. The model still runs its own forward: the buffers reach the attention function
(``decode_attention.py``) as two extra keyword arguments, which transformers passes down to it, and the model is
called without a cache of its own.

Layout: row ``layer * capacity + position`` holds that position's keys of every key/value head side by side, so a
layer's history is one contiguous block of rows. That matters for one new token: with the history as ``[heads,
length, dim]`` slices of a longer buffer, the batched matmul copied each slice before multiplying (two copies a
layer, 66 us each at 1,000 positions), and the compiled step lost to ``DynamicCache`` at length (15.5 against 12.5
ms a token). Here one query row per (head, query) pair, zero outside its head's columns, multiplies the whole block
at once: three times the multiply-adds of per-head products (a few thousand a position: nothing beside reading the
keys), no copy, one matmul for the scores and one for the output (measured: 9.7 against 10.7 ms a token at 64
positions, 13.3 against 14.7 at 1,000, compiled, one thread; in eager mode the very same logits:
tests/test_kv_buffer.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def buffer_shape(config: Any) -> tuple[int, int, int] | None:
    """(layers, key/value heads, head dim) of a model whose every layer attends to all positions; None for models
    with sliding-window or other special layers (they keep transformers' own caches)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        return None
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return None
    try:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return config.num_hidden_layers, kv_heads, head_dim
    except AttributeError:  # a config without the usual names: not a model this buffer knows
        return None


class KVBuffer:
    """Keys and values of ``capacity`` positions of every layer (rows ``layer * capacity + position``)."""

    def __init__(self, shape: tuple[int, int, int], capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        self.shape = shape
        self.capacity = capacity
        layers, kv_heads, head_dim = shape
        self.keys = torch.zeros((layers * capacity, kv_heads * head_dim), dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)

    def grown(self, capacity: int, keep: int) -> KVBuffer:
        """A buffer of ``capacity`` positions holding this one's first ``keep`` positions of every layer."""
        bigger = KVBuffer(self.shape, capacity, self.keys.dtype, self.keys.device)
        layers = self.shape[0]
        for old, new in ((self.keys, bigger.keys), (self.values, bigger.values)):
            new.view(layers, capacity, -1)[:, :keep] = old.view(layers, self.capacity, -1)[:, :keep]
        return bigger

    def model_inputs(self, window: torch.Tensor) -> dict[str, Any]:
        """The model-call arguments for a pass that ends with ``len(window)`` positions held (``window``: the
        positions 0, 1, ... as a tensor; its length is what the compiled step sees change, not its values)."""
        return {"use_cache": False, "kv_buffer": (self.keys, self.values), "kv_window": window}


def buffer_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    buffers: tuple[torch.Tensor, torch.Tensor],
    window: torch.Tensor,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """Store ``key``/``value`` (``[1, kv_heads, new, dim]``, the last ``new`` positions of ``window``) in the
    buffers at ``module.layer_idx``, then attend ``query`` (``[1, heads, new, dim]``) to every position so far;
    returns ``[1, new, heads, dim]`` as transformers' attention functions do."""
    keys, values = buffers
    _, heads, new, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    total = window.shape[0]
    capacity = keys.shape[0] // module.config.num_hidden_layers
    first = module.layer_idx * capacity
    rows = first + window[total - new :]
    keys.index_copy_(0, rows, key[0].transpose(0, 1).reshape(new, kv_heads * dim))
    values.index_copy_(0, rows, value[0].transpose(0, 1).reshape(new, kv_heads * dim))
    history_keys = keys[first : first + total]  # [total, kv_heads * dim], contiguous
    history_values = values[first : first + total]
    scale = dim**-0.5 if scaling is None else scaling
    if new == 1:
        grouped = query.reshape(kv_heads, group, dim)
        own_head = torch.eye(kv_heads, dtype=query.dtype, device=query.device)
        rows_of_queries = (own_head[:, None, :, None] * grouped[:, :, None, :]).reshape(heads, kv_heads * dim)
        scores = torch.mm(rows_of_queries, history_keys.t()) * scale
        weights = torch.softmax(scores.float(), dim=-1).to(history_values.dtype)
        every_head = torch.mm(weights, history_values).reshape(kv_heads, group, kv_heads, dim)
        output = torch.diagonal(every_head, dim1=0, dim2=2).permute(2, 0, 1)  # each query's own head
        return output.reshape(1, 1, heads, dim), None
    # A prompt: transformers' SDPA over the history, causal from this call's first position on.
    history_keys = history_keys.view(total, kv_heads, dim).transpose(0, 1)[None]
    history_values = history_values.view(total, kv_heads, dim).transpose(0, 1)[None]
    if total == new:  # nothing before it: the plain causal kernel (a mask made it 2.4x slower)
        output = F.scaled_dot_product_attention(query, history_keys, history_values, is_causal=True, scale=scale,
                                                enable_gqa=True)
    else:
        mask = torch.ones((new, total), dtype=torch.bool, device=query.device).tril(total - new)
        output = F.scaled_dot_product_attention(query, history_keys, history_values, attn_mask=mask, scale=scale,
                                                enable_gqa=True)
    return output.transpose(1, 2), None
