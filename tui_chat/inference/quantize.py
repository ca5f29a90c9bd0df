"""Weight-only int4 quantization of a loaded model for inference on CPU: our own layout and kernel where they load
(native_kernels.py: AVX-512 VNNI, one decode thread), else torchao's int4 CPU layout and torch's kernel.

Decoding one sequence reads every weight once per token, so fewer bytes a weight is more tokens a second. int4 with
one scale and zero point per group of 32 weights is the layout of the bundled model's own GGUF (Q4_1, the same
groups of 32), so it reads about as many bytes as llama.cpp does and loses little next to those weights. torchao's CPU
layout runs ``torch.ops.aten._weight_int4pack_mm_for_cpu`` with bfloat16 activations (float32 activations take a slow
path: about 10x slower here); ours takes less than half its time a token. The output projection (the tied
embeddings, Q8_0 in the GGUF) stays in the model's dtype: at int4 it turned "The capital of France is Paris." into a
wrong answer.

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

from tui_chat.inference import native_kernels

GROUP_SIZE = 32  # weights sharing one scale and zero point, along the input dimension (as in GGUF Q4_1)
# Rows (tokens) from which a matmul takes the bfloat16 weights: decoding is 1 row. Measured on one core (576 x 1,536,
# CPU time): int4 44 us at 1 row and 61 at 4, bfloat16 68 and 69; at 8 rows int4 101, bfloat16 83.
PROMPT_ROWS = 8


# Sibling projections a model calls one after the other on the same input: one matmul computes them all (7 -> 4
# kernel calls a layer in a Llama block). Measured on one core (CPU time, one row): q, k, v 20 + 14 + 14 us against
# 26 us fused, gate and up 36 + 36 against 61.
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class Int4Linear(torch.nn.Module):
    """A ``Linear`` with two copies of its weight: int4 (torchao's CPU packing, groups of ``GROUP_SIZE``) for decode
    steps, and the original bfloat16 one (``prompt_weight``) for calls of ``PROMPT_ROWS`` rows or more. Several
    ``Linear`` layers with the same input size make one whose output is theirs side by side.

    The int4 weights are plain tensors fed to the aten kernel directly, not torchao's tensor subclass: torch.compile
    traces a plain op faster, and only plain tensors can key Inductor's compile cache.
    """

    def __init__(self, *linears: torch.nn.Linear, native: bool = False) -> None:
        super().__init__()
        self.in_features = linears[0].in_features
        self.out_features = sum(linear.out_features for linear in linears)
        dense = torch.cat([linear.weight.detach() for linear in linears])
        native = native and native_kernels.loaded() and native_kernels.fits(self.out_features, self.in_features)
        # Our kernel's layout (native_kernels.pack), or None and torchao's packing for torch's kernel.
        self.register_buffer("q4q8_weight", native_kernels.pack(dense) if native else None)
        if not native:
            from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor

            packed = Int4OpaqueTensor.from_hp(dense, [1, GROUP_SIZE])
            self.register_buffer("int4_weight", packed.qdata)
            self.register_buffer("scale_and_zero", packed.scale_and_zero)
        self.prompt_weight = torch.nn.Parameter(dense, requires_grad=False)
        biases = [linear.bias for linear in linears]
        self.bias = None if biases[0] is None else torch.nn.Parameter(torch.cat(biases).detach(), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.numel() >= PROMPT_ROWS * self.in_features:
            return F.linear(hidden, self.prompt_weight, self.bias)
        rows = hidden.reshape(-1, self.in_features).contiguous()
        if self.q4q8_weight is None:
            output = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.int4_weight, GROUP_SIZE, self.scale_and_zero)
        elif torch.compiler.is_compiling():  # traced: the op, which a decode package calls without Python
            output = torch.ops.tuichat.q4q8_linear(rows, self.q4q8_weight)
        else:  # eager: the kernel straight from ctypes (the op's dispatch costs ~10 us a call)
            output = native_kernels.matmul(rows, self.q4q8_weight)
        output = output.reshape(*hidden.shape[:-1], self.out_features)
        return output if self.bias is None else output + self.bias


class FusedPart(torch.nn.Module):
    """Stands in for one projection of a fused group: the first of the group's calls on an input computes every
    part with one ``Int4Linear`` and keeps the others' outputs for the calls that follow on the same input (the
    model's own forward calls them in a row); a call on another input computes afresh."""

    def __init__(self, fused: Int4Linear, index: int, sizes: list[int], outputs: dict[str, Any]) -> None:
        super().__init__()
        self.fused = fused  # the same module in every part of the group (the state dict holds it once per part)
        self.index = index
        self.sizes = sizes
        self.outputs = outputs  # shared by the group: "input" -> the input, index -> a part not yet handed out

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        outputs = self.outputs
        if outputs.get("input") is not hidden or self.index not in outputs:
            outputs.clear()
            outputs.update(enumerate(self.fused(hidden).split(self.sizes, dim=-1)))
            outputs["input"] = hidden
        output = outputs.pop(self.index)
        if len(outputs) == 1:
            outputs.clear()  # every part handed out: keep no reference to a prompt's activations
        return output


def quantize_int4(model: Any, native: bool = False) -> int:
    """Replace ``model``'s linear layers (all but the output projection) with ``Int4Linear`` ones in place, fusing
    the groups of ``FUSED_GROUPS``; returns how many layers changed. The model must be on CPU in bfloat16. ``native``:
    decode through native_kernels's kernel where it is loaded and the layer's shape fits it."""
    output = model.get_output_embeddings()

    def quantizable(module: Any) -> bool:
        return type(module) is torch.nn.Linear and module is not output and module.in_features % GROUP_SIZE == 0

    changed = 0
    for parent in list(model.modules()):
        for group in FUSED_GROUPS:
            linears = [getattr(parent, name, None) for name in group]
            if not all(quantizable(linear) for linear in linears):
                continue
            if len({(linear.in_features, linear.bias is None) for linear in linears}) == 1:
                fused = Int4Linear(*linears, native=native)
                sizes = [linear.out_features for linear in linears]
                outputs: dict[str, Any] = {}
                for index, name in enumerate(group):
                    setattr(parent, name, FusedPart(fused, index, sizes, outputs))
                changed += len(group)
        for name, child in list(parent.named_children()):
            if quantizable(child):
                setattr(parent, name, Int4Linear(child, native=native))
                changed += 1
    return changed
