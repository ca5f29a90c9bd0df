"""The CPU decode step compiled ahead of time: an AOTInductor package kept in the data home, built once per model and
loaded by every later process in about a second.

``torch.compile`` compiles in the process that decodes, every time a process starts: 35-60 s even with Inductor's
artifacts kept (compile_cache.py), because tracing the model is redone each time. So on CPU a server answered with
the eager step and a second process compiled and took over (serve/handover.py); ``ask``, a process of its own,
never got the compiled step at all. Here the step over the KV buffer (kv_buffer.py) is exported once with the
buffer's capacity and the history's length as dynamic sizes, compiled to a shared library with its weights inside
(``torch._inductor.aoti_compile_and_package``: ~4 s to export, ~40 s to compile on this machine), and saved. A later
process loads that file instead of compiling: the first reply decodes compiled.

The package holds the model's body (embeddings, layers, final norm); the output projection runs outside it, since the
int8-screened head (screened_head.py) picks its rows by value, which an ahead-of-time graph cannot. A build is
checked against the eager step before it is kept (``matches_eager``): a model whose forward does more to the logits
than projecting the last hidden state would fail there and stay eager.

The weights are compiled in, so a package belongs to one set of weights: the file name carries the model's name and
a hash of everything the code depends on (config, weights' files, dtype, quantization, thread count, torch, CPU), and
a new build for a name removes that name's older packages (a model trained again under the same name).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from trainer.models import process_alive

from tui_chat.inference.compile_cache import DIRECTORY, cpu_description, name_slug
from tui_chat.inference import native_kernels
from tui_chat.inference.kv_buffer import KVBuffer

SUFFIX = ".pt2"
PARTIAL = f".partial{SUFFIX}"  # a build being written, after its process id: <name>-<key>.<pid>.partial.pt2
# Sizes the export is traced at. Dynamic dimensions are specialised when their example is 0 or 1, so both examples are
# larger; the capacity bounds are every power of two a context of up to MAX_POSITIONS positions grows through.
EXAMPLE_CAPACITY = 64
EXAMPLE_LENGTH = 8
MAX_POSITIONS = 1 << 17


def weights_fingerprint(source: str, model: Any) -> str:
    """What identifies the weights a model was loaded with: its directory's weight files (name, size, modification
    time: a model trained again rewrites them) or, for a Hub id, the commit transformers resolved it to."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
        return "\n".join([str(path.resolve()), *(f"{p.name} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)])
    return f"{source} {getattr(model.config, '_commit_hash', None)}"


def package_file(
    models_dir: Path, model: Any, name: str, source: str, quantization: str, threads: int | None
) -> Path | None:
    """Where the decode package of ``model`` (loaded as ``name`` from ``source``) is kept in the data home that holds
    ``models_dir``; None without a data home (``models_dir`` missing, as in tests of a model from a path)."""
    if not models_dir.is_dir():
        return None
    key = "\n".join([
        model.config.to_json_string(), weights_fingerprint(source, model), str(model.dtype), quantization,
        str(threads), torch.__version__, cpu_description(),
    ])
    return models_dir.parent / DIRECTORY / f"{name_slug(name)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}{SUFFIX}"


class _Body(torch.nn.Module):
    """The model up to its last hidden state, for one new token over the KV buffer: what the package computes."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                window: torch.Tensor) -> torch.Tensor:
        body = self.model.get_decoder()
        output = body(input_ids=token, position_ids=position, use_cache=False, kv_buffer=(keys, values),
                      kv_window=window)
        return output.last_hidden_state[:, -1]


class PackagedStep:
    """A decode step with ``Decoder.eager_step``'s signature: the package's body, then the model's output projection."""

    def __init__(self, runner: Any, model: Any) -> None:
        self.runner = runner
        self.head = model.get_output_embeddings()

    def __call__(self, token: torch.Tensor, position: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        keys, values = inputs["kv_buffer"]
        return self.head(self.runner(token, position, keys, values, inputs["kv_window"]))


def build(model: Any, shape: tuple[int, int, int], path: Path) -> None:
    """Export and compile ``model``'s decode step over a KV buffer of ``shape`` into ``path`` (written whole or not
    at all), then remove the older packages of the same model name. Compiles for the calling thread's torch thread
    count: the generated kernels keep it."""
    layers = shape[0]
    scratch = KVBuffer(shape, EXAMPLE_CAPACITY, model.dtype, model.device)
    example = (
        torch.tensor([[0]], device=model.device),
        torch.tensor([[EXAMPLE_LENGTH - 1]], device=model.device),
        scratch.keys,
        scratch.values,
        torch.arange(EXAMPLE_LENGTH, device=model.device),
    )
    capacity = torch.export.Dim("capacity", min=2, max=MAX_POSITIONS)
    length = torch.export.Dim("length", min=2, max=MAX_POSITIONS)
    rows = {0: layers * capacity}  # a layer's block of rows per position of capacity (kv_buffer.py's layout)
    with torch.inference_mode():
        exported = torch.export.export(_Body(model).eval(), example, dynamic_shapes=({}, {}, rows, rows, {0: length}),
                                       strict=False)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, like everything in the data home
    _remove_abandoned_builds(path.parent)
    partial = path.with_name(f"{path.stem}.{os.getpid()}{PARTIAL}")
    try:
        options = native_kernels.aot_inductor_options() if native_kernels.loaded() else {}
        torch._inductor.aoti_compile_and_package(exported, package_path=str(partial), inductor_configs=options)
        partial.chmod(0o600)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    slug = path.name.rsplit("-", 1)[0]
    for older in path.parent.glob(f"{slug}-*{SUFFIX}"):
        if older != path and older.name.rsplit("-", 1)[0] == slug and not older.name.endswith(PARTIAL):
            older.unlink(missing_ok=True)


def _remove_abandoned_builds(directory: Path) -> None:
    """Remove the partial packages of processes that are gone (a successor ended mid-build leaves one: ~130 MB)."""
    for partial in directory.glob(f"*{PARTIAL}"):
        pid = partial.name.removesuffix(PARTIAL).rsplit(".", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            partial.unlink(missing_ok=True)


def build_checked(model: Any, shape: tuple[int, int, int], path: Path, eager: Any) -> None:
    """``build``, then keep the package only if it gives the eager step's logits (``matches_eager``)."""
    build(model, shape, path)
    if not matches_eager(load(path, model), eager, model, shape):
        path.unlink(missing_ok=True)
        raise RuntimeError("the compiled step's logits differ from the eager step's; replies stay eager")


def load(path: Path, model: Any) -> PackagedStep:
    """The step compiled into ``path`` (raises what torch raises for a missing, cut short or foreign file)."""
    return PackagedStep(torch._inductor.aoti_load_package(str(path)), model)


def matches_eager(step: PackagedStep, eager: Any, model: Any, shape: tuple[int, int, int]) -> bool:
    """Whether ``step`` gives the eager step's logits (``eager``: ``Decoder.eager_step``) for a few tokens after a short
    prompt, within bfloat16's rounding of a forward pass (measured: under a logit of ~30 on the bundled model)."""
    prompt = torch.arange(1, EXAMPLE_LENGTH + 1, device=model.device)[None]
    positions = torch.arange(EXAMPLE_CAPACITY, device=model.device)
    buffers = [KVBuffer(shape, EXAMPLE_CAPACITY, model.dtype, model.device) for _ in range(2)]
    with torch.inference_mode():
        for buffer in buffers:
            model(input_ids=prompt, position_ids=positions[None, :EXAMPLE_LENGTH], logits_to_keep=1,
                  **buffer.model_inputs(positions[:EXAMPLE_LENGTH]))
        token = prompt[:, -1:]
        for position in range(EXAMPLE_LENGTH, EXAMPLE_LENGTH + 4):
            at = torch.tensor([[position]], device=model.device)
            packaged = step(token, at, buffers[0].model_inputs(positions[: position + 1])).float()
            expected = eager(token, at, buffers[1].model_inputs(positions[: position + 1])).float()
            if (packaged - expected).abs().max() > 0.05 * expected.abs().max() + 0.1:
                return False
            token = expected.argmax(dim=-1, keepdim=True)
    return True
