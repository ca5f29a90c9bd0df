"""Decode kernels of our own for CPUs with AVX-512 VNNI, from native_kernels.c compiled once per machine.

A decode step multiplies one row of activations by every weight of the model. torch's kernels do that in float
after unpacking each weight, and were bound by instructions, not by memory. Ours multiply bytes, 64 products a
VNNI instruction, with the activations rounded to int8 twice over (the value, then what its rounding left: see
native_kernels.c), so an output stays within ~0.3% of the exact product and greedy answers open as float32's do
(tests/test_native_kernels.py, tests/test_engine.py). One core, weights streamed from memory:

- the int4 layers (``q4q8_linear``): the bundled model's 120 matmuls a token 2.1-2.3 ms against 4.9 for torch's
  int4 kernel;
- the int8 screen of the output projection (``head_matvec``, screened_head.py): 0.8-0.9 ms against 1.8 for
  ``torch._weight_int8pack_mm``.

`python -m bench decode` has the tokens a second. The source is compiled with the machine's C compiler (``cc -O3
-march=native``, about a second) into the data home's compile cache, keyed by the source, the compiler and the CPU;
a machine without the instructions or a compiler keeps torch's kernels (``load`` says why). The int4 matmul is the
custom op ``torch.ops.tuichat.q4q8_linear``: eager steps call it through ctypes, and an AOTInductor package
(decode_package.py) calls the library's C shim directly, so the library must be loaded (``load``) before a package
that uses it. The output projection runs outside the package, so it is a plain ctypes call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from tui_chat.inference.compile_cache import DIRECTORY, cpu_description

SOURCE = Path(__file__).with_name("native_kernels.c")
GROUP = 32  # inputs sharing a scale and a minimum (as in quantize.GROUP_SIZE and GGUF's Q4_1)
ROWS_PER_GROUP = 64  # outputs interleaved in the packed layout: 4 tiles of 16 (one AVX-512 register of floats)
RECORD = 320  # bytes of one tile's block: 16 x 32 weights at 4 bits, 16 fp16 scales, 16 fp16 minimums
MAX_INPUTS = 16384  # the kernel's buffer for one row of int8 activations
# The C signature AOTInductor declares for the op (torch/_inductor/config.py: aot_inductor.custom_ops_to_c_shims).
C_SHIM = ("AOTITorchError aoti_torch_cpu_q4q8_linear("
          "AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle* ret0)")
_REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512_vnni", "f16c")

_library: ctypes.CDLL | None = None
_why_not: str | None = None


def cpu_supported() -> bool:
    """Whether this CPU has the instructions the kernel uses (Linux x86-64: /proc/cpuinfo's flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return all(flag in flags for flag in _REQUIRED_FLAGS)


def library_path(cache_dir: Path, compiler: str) -> Path:
    """Where the kernel built by ``compiler`` for this CPU is kept in ``cache_dir``."""
    key = "\n".join([SOURCE.read_text(), compiler, cpu_description(), torch.__version__])
    return cache_dir / f"kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build(path: Path, compiler: str) -> None:
    """Compile the kernel into ``path`` (written whole or not at all); raises RuntimeError naming the compiler's
    last line."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.so")
    torch_lib = Path(torch.__file__).parent / "lib"  # the C shim's tensor functions are libtorch's
    command = [compiler, "-O3", "-march=native", "-shared", "-fPIC", "-o", str(partial), str(SOURCE),
               f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise RuntimeError(f"compiling {SOURCE.name} failed: {lines[-1]}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    for older in path.parent.glob("kernels-*.so"):  # builds of an older source (a process using one keeps its copy)
        if older != path and "." not in older.stem:  # not another process's build in progress
            older.unlink(missing_ok=True)


def find_compiler() -> str | None:
    """The C compiler to build with: $CC, else cc or gcc on the PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def load(models_dir: Path | None) -> bool:
    """Load the kernel, compiling it first into the data home's compile cache (next to ``models_dir``) or, without a
    data home, a temporary one; returns whether it is in use. Once loaded it stays for the process."""
    global _library, _why_not
    if _library is not None:
        return True
    if not cpu_supported():
        _why_not = "this CPU lacks AVX-512 VNNI"
        return False
    compiler = find_compiler()
    if compiler is None:
        _why_not = "no C compiler (cc) found"
        return False
    cache_dir = models_dir.parent / DIRECTORY if models_dir is not None and models_dir.is_dir() else (
        Path(tempfile.gettempdir()) / f"tui-chat-{os.getuid()}")
    path = library_path(cache_dir, compiler)
    try:
        if not path.is_file():
            build(path, compiler)
        _library = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)  # global: a package's C shim call resolves here
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        _why_not = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return False
    _library.tuichat_q4q8_matmul.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                             ctypes.c_int64, ctypes.c_void_p]
    _library.tuichat_q4q8_matmul.restype = ctypes.c_int
    _library.tuichat_q8_matvec.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    _library.tuichat_q8_matvec.restype = ctypes.c_int
    return True


def loaded() -> bool:
    """Whether the kernel is loaded in this process."""
    return _library is not None


def loaded_name() -> str | None:
    """The loaded kernel's file name without its suffix (what it was built from: a package that calls it is keyed
    by it)."""
    return None if _library is None else Path(_library._name).stem


def why_not() -> str | None:
    """Why ``load`` left torch's kernel in place (None when it did not, or was not asked)."""
    return _why_not


def fits(out_features: int, in_features: int) -> bool:
    """Whether a weight of this shape fits the kernel's layout."""
    return out_features % ROWS_PER_GROUP == 0 and in_features % GROUP == 0 and in_features <= MAX_INPUTS


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out x in) as the kernel's records: int4 groups of 32 inputs with a float16 scale and minimum each
    (``w = scale * q + minimum``, q in 0..15), laid out in the order one decode step reads them."""
    out_features, in_features = weight.shape
    blocks = in_features // GROUP
    grouped = weight.detach().float().reshape(out_features, blocks, GROUP)
    low, high = grouped.amin(dim=-1), grouped.amax(dim=-1)
    scale = ((high - low) / 15).to(torch.float16)
    minimum = low.to(torch.float16)
    steps = (grouped - minimum.float()[..., None]) / scale.float().clamp_min(1e-12)[..., None]
    q = torch.round(steps).clamp(0, 15).to(torch.uint8)
    # [row groups, 4 tiles, 16 rows, blocks, 4 chunks, low/high nibble, 4 inputs] -> one tile's block: the 4 chunks
    # of 64 bytes, byte r*4+i of chunk p holding inputs 8p+i (low nibble) and 8p+4+i (high) of row r.
    q = q.reshape(out_features // ROWS_PER_GROUP, 4, 16, blocks, 4, 2, 4)
    nibbles = (q[..., 0, :] | (q[..., 1, :] << 4)).permute(0, 3, 1, 4, 2, 5)
    nibbles = nibbles.reshape(out_features // ROWS_PER_GROUP, blocks, 4, 256)

    def per_tile(values: torch.Tensor) -> torch.Tensor:
        tiles = values.reshape(out_features // ROWS_PER_GROUP, 4, 16, blocks).permute(0, 3, 1, 2).contiguous()
        return tiles.view(torch.uint8)

    return torch.cat([nibbles, per_tile(scale), per_tile(minimum)], dim=-1).contiguous()


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The float32 weight ``packed`` stands for (what the kernel multiplies by, before the activations' rounding)."""
    groups, blocks = packed.shape[:2]
    nibbles = packed[..., :256].reshape(groups, blocks, 4, 4, 16, 4)  # g b tile chunk row input
    q = torch.stack([nibbles & 15, nibbles >> 4], dim=-2).float()  # g b tile chunk row nibble input
    q = q.permute(0, 2, 4, 1, 3, 5, 6).reshape(groups * ROWS_PER_GROUP, blocks, GROUP)
    scales = packed[..., 256:].contiguous().view(torch.float16).float()  # g b tile (16 scales, 16 minimums)
    scale, minimum = (part.permute(0, 2, 3, 1).reshape(groups * ROWS_PER_GROUP, blocks, 1)
                      for part in scales.split(16, dim=-1))
    return (q * scale + minimum).reshape(groups * ROWS_PER_GROUP, blocks * GROUP)


@torch.library.custom_op("tuichat::q4q8_linear", mutates_args=())
def q4q8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` (bfloat16, ``[..., in]``) times the weight ``pack`` made, in bfloat16 (``[..., out]``)."""
    return matmul(x, weight)


def matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What ``q4q8_linear`` computes, called directly (for eager steps: no dispatch)."""
    if _library is None:
        raise RuntimeError("the int4 x int8 kernel is not loaded (native_kernels.load)")
    if x.dtype != torch.bfloat16 or weight.dtype != torch.uint8 or x.device.type != "cpu":
        raise ValueError("the int4 x int8 kernel takes bfloat16 activations on CPU and a weight from pack()")
    in_features, out_features = x.shape[-1], weight.shape[0] * ROWS_PER_GROUP
    rows = x.reshape(-1, in_features).contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=torch.bfloat16)
    if _library.tuichat_q4q8_matmul(weight.data_ptr(), out_features, in_features, rows.data_ptr(), rows.shape[0],
                                    out.data_ptr()):
        raise ValueError(f"the int4 x int8 kernel cannot take {in_features} inputs and {out_features} outputs")
    return out.reshape(*x.shape[:-1], out_features)


@q4q8_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0] * ROWS_PER_GROUP)


HEAD_TILE = 16  # output rows interleaved in the int8 layout (one AVX-512 register of int32 sums)


def head_fits(out_features: int, in_features: int) -> bool:
    """Whether an int8 output projection of this shape fits ``head_matvec``."""
    return out_features % HEAD_TILE == 0 and in_features % 4 == 0 and in_features <= MAX_INPUTS


def pack_head(int8_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An int8 weight (out x in) as ``head_matvec`` reads it: tiles of 16 rows, 4 inputs of each row side by side
    (byte r*4+i of every 64: row r, input i), and each row's sum of weights."""
    out_features, in_features = int8_weight.shape
    tiles = int8_weight.reshape(out_features // HEAD_TILE, HEAD_TILE, in_features // 4, 4).permute(0, 2, 1, 3)
    return tiles.contiguous(), int8_weight.sum(dim=1, dtype=torch.int32).contiguous()


def head_matvec(
    x: torch.Tensor, tiles: torch.Tensor, row_sums: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """One row ``x`` (bfloat16, contiguous, ``[in]``) times the int8 weight ``pack_head`` made, each row's product
    times its float32 ``scales``: float32 ``[out]``. The activations' rounding moves an output by at most
    ``activation_error_bound``."""
    if _library is None:
        raise RuntimeError("the native kernels are not loaded (native_kernels.load)")
    out = torch.empty(row_sums.shape[0], dtype=torch.float32)
    if _library.tuichat_q8_matvec(tiles.data_ptr(), row_sums.data_ptr(), scales.data_ptr(), out.shape[0],
                                  x.shape[-1], x.data_ptr(), out.data_ptr()):
        raise ValueError(f"the int8 kernel cannot take {x.shape[-1]} inputs and {out.shape[0]} outputs")
    return out


def activation_error_bound(x: torch.Tensor, row_abs_sums: torch.Tensor) -> torch.Tensor:
    """How far ``head_matvec``'s rounding of ``x`` can move each output (``row_abs_sums``: each row's sum of |weights|,
    scaled): every activation is within max|x| / 127 / 508 of its two int8 terms (native_kernels.c)."""
    return row_abs_sums * (x.float().abs().max() / (127 * 508))


def aot_inductor_options() -> dict:
    """The AOTInductor settings under which a package calls the kernel's C shim directly (no runtime dispatch)."""
    return {"aot_inductor.custom_ops_to_c_shims": {torch.ops.tuichat.q4q8_linear.default: [C_SHIM]}}
