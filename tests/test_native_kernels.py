"""The int4 x int8 decode kernel (tui_chat/inference/native_kernels.py, native_kernels.c): its layout keeps the int4
weights, its products are those of the unpacked weights up to the activations' int8 rounding, a decode package calls
it through its C shim with the eager step's logits, and without it torch's kernel stays."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from tui_chat.inference import native_kernels
from tui_chat.inference.decoding import Decoder
from tui_chat.inference.hf_engine import HFEngine
from tui_chat.inference.quantize import Int4Linear

from .test_kv_buffer import logits_with_decoder
from .tiny_models import save_tiny_model

CPU = torch.device("cpu")
needs_kernel = pytest.mark.skipif(not native_kernels.load(None), reason=f"no kernels: {native_kernels.why_not()}")


def test_packing_keeps_every_weight_within_half_a_step_of_its_group() -> None:
    torch.manual_seed(0)
    weight = torch.randn(128, 96) * 0.05
    weight[3, :32] = 0.25  # a constant group: a zero step, every weight its minimum
    packed = native_kernels.pack(weight)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 4, native_kernels.RECORD)
    restored = native_kernels.unpack(packed)
    groups = weight.reshape(128, 3, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (restored - weight).reshape(128, 3, 32).abs().amax(-1)
    assert (error <= step / 2 * 1.01 + 1e-3).all()  # half a step, plus the float16 scale and minimum's rounding
    assert restored[3, :32].eq(torch.tensor(0.25).half().float()).all()
    assert native_kernels.fits(128, 96) and not native_kernels.fits(96, 96) and not native_kernels.fits(128, 100)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3])
def test_the_kernel_multiplies_as_the_unpacked_weights_do(rows: int) -> None:
    torch.manual_seed(rows)
    for out_features, in_features in [(192, 576), (576, 1536), (64, 32)]:
        packed = native_kernels.pack(torch.randn(out_features, in_features) * 0.05)
        x = torch.randn(rows, 2 * in_features).to(torch.bfloat16)[:, ::2]  # not contiguous
        got = native_kernels.q4q8_linear(x, packed)
        expected = x.float() @ native_kernels.unpack(packed).T
        assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
        # Only the activations' two-term int8 rounding (and bfloat16's of the output) is left: ~0.3% of the largest.
        assert (got.float() - expected).abs().max() < 0.005 * expected.abs().max()
    with pytest.raises(ValueError, match="bfloat16"):
        native_kernels.q4q8_linear(torch.randn(1, 32), native_kernels.pack(torch.randn(64, 32)))


@needs_kernel
def test_the_int8_output_kernel_stays_within_the_bound_the_screen_adds() -> None:
    torch.manual_seed(4)
    weight = torch.randint(-127, 128, (4096, 576), dtype=torch.int8)
    scales = torch.rand(4096) * 0.01
    tiles, row_sums = native_kernels.pack_head(weight)
    row_abs_sums = weight.abs().sum(dim=1).float() * scales
    outlier = torch.zeros(576)
    outlier[7] = 40.0  # one feature 100x the others, as hidden states have
    for x in [torch.randn(576), torch.randn(576) * 0.4 + outlier]:
        x = x.to(torch.bfloat16)
        got = native_kernels.head_matvec(x, tiles, row_sums, scales).double()
        exact = (weight.double() * scales.double()[:, None]) @ x.double()
        error = (got - exact).abs()
        bound = native_kernels.activation_error_bound(x, row_abs_sums).double() + exact.abs() * 2**-20 + 1e-6
        assert (error <= bound).all() and error.max() > 0  # rounded (not a float product), within the bound


@needs_kernel
def test_a_decode_package_calls_the_kernel_through_its_c_shim(tmp_path: Path) -> None:
    path = save_tiny_model(tmp_path / "model", hidden=64)  # every projection's shape fits the kernel
    engine = HFEngine(str(path), tmp_path, device="cpu", dtype="bfloat16", quantize="int4", threads=1, compile=False)
    engine.load()
    model = engine.loaded.model
    layers = [module for module in model.modules() if isinstance(module, Int4Linear)]
    assert layers and all(layer.q4q8_weight is not None for layer in layers)
    package = tmp_path / "compile-cache" / "tiny-0123456789abcdef.pt2"
    package.parent.mkdir()
    builder = Decoder(model, CPU, 256, compile=True, threads=1, package_file=package)
    builder.warm_up(wait=True)  # built, then checked against the eager step (decode_package.matches_eager)
    assert builder.compile_state == "ready", builder.compile_state
    with zipfile.ZipFile(package) as archive:
        code = b"".join(archive.read(name) for name in archive.namelist() if name.endswith((".cpp", ".wrapper.cpp")))
    calls = code.count(b"aoti_torch_cpu_q4q8_linear(buf")  # called directly, not through the proxy executor
    assert calls == 4 * 2 and b"call_function" not in code  # 4 matmuls a layer (q, k, v and gate, up fused), 2 layers
    ids, steps = [5, 17, 42, 99, 7, 3], list(range(50, 60))
    eager = logits_with_decoder(Decoder(model, CPU, 256, compile=False, threads=1), ids, steps)
    packaged = logits_with_decoder(builder, ids, steps)
    torch.testing.assert_close(torch.stack(packaged), torch.stack(eager), atol=0.05, rtol=0.02)


def test_without_the_kernel_torchs_int4_kernel_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_kernels, "_library", None)
    monkeypatch.setattr(native_kernels, "_why_not", None)
    monkeypatch.setattr(native_kernels, "cpu_supported", lambda: False)
    assert not native_kernels.load(tmp_path) and native_kernels.why_not() == "this CPU lacks AVX-512 VNNI"
    layer = Int4Linear(torch.nn.Linear(64, 128, bias=False).to(torch.bfloat16), native=True)
    assert layer.q4q8_weight is None and layer.int4_weight.dtype == torch.uint8
    assert layer(torch.randn(1, 64).to(torch.bfloat16)).shape == (1, 128)


def test_a_compiler_that_fails_says_why_in_one_line(tmp_path: Path) -> None:
    older = tmp_path / "kernels-0123456789abcdef.so"
    older.write_bytes(b"a build of an older source")
    with pytest.raises(RuntimeError, match=r"^compiling native_kernels.c failed: "):
        native_kernels.build(tmp_path / "kernels-fedcba9876543210.so", "false")
    assert list(tmp_path.iterdir()) == [older]  # no partial library left, and the older build kept until one works


@pytest.mark.skipif(native_kernels.find_compiler() is None, reason="no C compiler")
def test_a_build_replaces_older_builds_but_not_another_processs_build_in_progress(tmp_path: Path) -> None:
    (tmp_path / "kernels-0123456789abcdef.so").write_bytes(b"a build of an older source")
    elsewhere = tmp_path / "kernels-fedcba9876543210.999999.partial.so"  # another process's build in progress
    elsewhere.write_bytes(b"half a library")
    native_kernels.build(tmp_path / "kernels-fedcba9876543210.so", native_kernels.find_compiler())
    assert sorted(tmp_path.iterdir()) == [elsewhere, tmp_path / "kernels-fedcba9876543210.so"]
