"""The output projection for CPU decoding: int8 weights screen the vocabulary, exact weights score what can win.

With int4 layers the bfloat16 output projection is the largest read of a decoded token (49,152 x 576 for the bundled
model: 57 MB, a large share of a token on one core). An int8 copy reads half of that, but rounding every logit changed
greedy answers (a per-row int8 projection alone changed the first word of one of eight test replies). So the int8
logits only screen: each comes with a bound on its error, and every token whose logit could reach the largest one
is scored again with the exact weights. The greedy choice is then the one the bfloat16 projection makes (up to ties
at bfloat16's resolution; a repetition penalty >= 1 only lowers logits, so it cannot lift a screened-out token);
the logits of tokens that cannot win keep their int8 value, off by at most the bound (a fraction of a logit).

Where native_kernels.py's library loads, the int8 logits come from its VNNI kernel (0.8-0.9 ms a token against 1.8
for ``torch._weight_int8pack_mm``): the activations are rounded too there, so the bound adds what that can move a
logit (a hundred-thousandth of the largest activation per unit of weight: the contenders stay a handful).

tests/test_screened_head.py checks the greedy replies against the bfloat16 projection's; the speed is in the
README's decode numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tui_chat.inference import native_kernels

# bfloat16 keeps 8 significant bits: the int8 kernel's output (a logit) is rounded by at most this fraction of it.
_BFLOAT16_ROUNDING = 2.0**-8
# The native kernel's float32 sums (int32 products past 2^24 converted, a few multiplications) round by far less.
_FLOAT32_SUMS = 2.0**-20


class ScreenedHead(torch.nn.Module):
    """Drop-in for a bias-free output ``Linear`` over bfloat16 ``weight`` (shared, not copied: it stays the input
    embeddings when they are tied). One position at a time is screened; more (never in decoding) go exact. ``native``:
    screen with native_kernels.py's int8 kernel where it is loaded and the shape fits it."""

    def __init__(self, weight: torch.nn.Parameter, native: bool = False) -> None:
        super().__init__()
        self.weight = weight
        exact = weight.detach().float()
        # One scale per vocabulary row, itself a bfloat16 (the kernel's scale type), so the error below is the real one.
        scales = (exact.abs().amax(dim=1).clamp_min(1e-12) / 127).to(torch.bfloat16)
        quantized = torch.round(exact / scales.float()[:, None]).clamp(-127, 127)
        int8_weight = quantized.to(torch.int8).contiguous()
        # Largest weight error in each row: a logit is off by at most this times the input's L1 norm.
        error = (exact - quantized * scales.float()[:, None]).abs().amax(dim=1)
        self.register_buffer("row_error", error, persistent=False)
        self.exactly_scored = 0  # tokens the last call scored with the exact weights (for tests and benchmarks)
        self.native = native and native_kernels.loaded() and native_kernels.head_fits(*weight.shape)
        if self.native:  # our VNNI kernel (native_kernels.py: 0.8-0.9 ms a token against 1.8 for torch's)
            tiles, row_sums = native_kernels.pack_head(int8_weight)
            self.register_buffer("int8_tiles", tiles, persistent=False)
            self.register_buffer("row_sums", row_sums, persistent=False)
            self.register_buffer("float_scales", scales.float(), persistent=False)
            # What the activations' rounding can add to a logit: a row's sum of |weights| times a bound per input.
            abs_sums = int8_weight.abs().sum(dim=1, dtype=torch.int32).float() * scales.float()
            self.register_buffer("row_abs_sums", abs_sums, persistent=False)
        else:
            self.register_buffer("int8_weight", int8_weight, persistent=False)
            self.register_buffer("scales", scales, persistent=False)

    @torch.compiler.disable  # data-dependent sizes: a compiled decode step calls this as it is
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        if flat.shape[0] != 1 or flat.dtype != torch.bfloat16:
            return F.linear(hidden, self.weight)
        if self.native:
            screened = native_kernels.head_matvec(flat[0].contiguous(), self.int8_tiles, self.row_sums,
                                                  self.float_scales)
            bound = (self.row_error * flat.float().abs().sum()
                     + native_kernels.activation_error_bound(flat, self.row_abs_sums) + screened.abs() * _FLOAT32_SUMS)
            logits = screened.to(hidden.dtype)[None]
        else:
            logits = torch._weight_int8pack_mm(flat, self.int8_weight, self.scales)
            screened = logits[0].float()
            bound = self.row_error * flat.float().abs().sum() + screened.abs() * _BFLOAT16_ROUNDING
        # A token outside this set has a logit below some token's for sure: it cannot be the largest.
        contenders = (screened + bound >= (screened - bound).max()).nonzero()[:, 0]
        self.exactly_scored = len(contenders)
        logits[0, contenders] = F.linear(flat, self.weight[contenders])[0]
        return logits.reshape(*hidden.shape[:-1], -1)


def screen_output_projection(model: torch.nn.Module, native: bool = False) -> bool:
    """Give ``model`` a ScreenedHead (``native``: see there) in place of its output projection if that is a bias-free
    bfloat16 ``Linear`` (what int4 decoding on CPU has); returns whether it did."""
    output = model.get_output_embeddings()
    if type(output) is not torch.nn.Linear or output.bias is not None or output.weight.dtype != torch.bfloat16:
        return False
    model.set_output_embeddings(ScreenedHead(output.weight, native=native))
    return True
