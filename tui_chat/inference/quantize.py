"""Weight-only int4 quantization of a loaded model for inference on CPU, through torchao's int4 CPU layout.

Decoding one sequence reads every weight once per token, so fewer bytes a weight is more tokens a second. int4 with
one scale and zero point per group of 32 weights is the layout of the bundled model's own GGUF (Q4_1, the same
groups of 32), so it reads about as many bytes as llama.cpp does and loses little next to those weights. torchao's CPU
layout runs ``torch.ops.aten._weight_int4pack_mm_for_cpu`` with bfloat16 activations (float32 activations take a slow
path: about 10x slower here). The output projection (the tied embeddings, Q8_0 in the GGUF) stays in the model's
dtype: at int4 it turned "The capital of France is Paris." into a wrong answer.

A prompt is another matter: hundreds of rows at once make a matmul bound by arithmetic, not by reading weights, and
there the int4 kernel (which unpacks the weights for every block of rows) took 2.8x the time of the bfloat16 matmul
on the same rows (43 against 16 ms for 2,000 x 576 x 1,536 on one core, AVX-512 BF16). So each layer keeps its
bfloat16 weights too, for prompts: the bundled model's layers take 212 MB more memory, and a 2,000-token history
encodes in a third of the time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

GROUP_SIZE = 32  # weights sharing one scale and zero point, along the input dimension (as in GGUF Q4_1)
# Rows (tokens) from which a matmul takes the bfloat16 weights: decoding is 1 row. Measured on one core (576 x 1,536,
# CPU time): int4 44 us at 1 row and 61 at 4, bfloat16 68 and 69; at 8 rows int4 101, bfloat16 83.
PROMPT_ROWS = 8


class Int4Linear(torch.nn.Module):
    """A bias-optional ``Linear`` whose ``weight`` is int4 (torchao ``Int4OpaqueTensor``) for decoding, and whose
    ``prompt_weight`` is the original bfloat16 weight for calls of ``PROMPT_ROWS`` rows or more."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor

        self.in_features, self.out_features = linear.in_features, linear.out_features
        dense = linear.weight.detach()
        self.weight = torch.nn.Parameter(Int4OpaqueTensor.from_hp(dense, [1, GROUP_SIZE]), requires_grad=False)
        self.prompt_weight = torch.nn.Parameter(dense, requires_grad=False)
        self.bias = linear.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.numel() >= PROMPT_ROWS * self.in_features:
            return F.linear(hidden, self.prompt_weight, self.bias)
        return F.linear(hidden, self.weight, self.bias)


def quantize_int4(model: Any) -> int:
    """Replace ``model``'s linear layers (all but the output projection) with ``Int4Linear`` ones in place; returns
    how many layers changed. The model must be on CPU in bfloat16."""
    output = model.get_output_embeddings()
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and module is not output and module.in_features % GROUP_SIZE == 0
    ]
    for name, module in chosen:
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, Int4Linear(module))
    return len(chosen)
