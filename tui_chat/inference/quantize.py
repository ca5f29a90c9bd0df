"""Weight-only int4 quantization of a loaded model for inference on CPU, through torchao.

Decoding one sequence reads every weight once per token, so fewer bytes a weight is more tokens a second. int4 with
one scale and zero point per group of 32 weights is the layout of the bundled model's own GGUF (Q4_1, the same
groups of 32), so it reads about as many bytes as llama.cpp does and loses little next to those weights. torchao's CPU
layout runs ``torch.ops.aten._weight_int4pack_mm_for_cpu`` with bfloat16 activations (float32 activations take a slow
path: about 10x slower here). The output projection (the tied embeddings, Q8_0 in the GGUF) stays in the model's
dtype: at int4 it turned "The capital of France is Paris." into a wrong answer.
"""

from __future__ import annotations

from typing import Any

import torch

GROUP_SIZE = 32  # weights sharing one scale and zero point, along the input dimension (as in GGUF Q4_1)


def quantize_int4(model: Any) -> int:
    """Replace the weights of ``model``'s linear layers (all but the output projection) with int4 ones in place;
    returns how many layers changed. The model must be on CPU in bfloat16."""
    # Already imported (quietly) by transformers while loading the model: torchao warns at import time.
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    output = model.get_output_embeddings()
    chosen: list[str] = []

    def wanted(module: torch.nn.Module, name: str) -> bool:
        if type(module) is not torch.nn.Linear or module is output or module.in_features % GROUP_SIZE:
            return False
        chosen.append(name)
        return True

    # set_inductor_config=False: torchao would otherwise change torch.compile's global settings for the process.
    quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=GROUP_SIZE, set_inductor_config=False), filter_fn=wanted)
    return len(chosen)
