"""Save the trained model as the chat loads it: LoRA merged into the base weights (or kept as an adapter naming its
base with --keep-adapter), a full fine-tune's gathered weights, and the tokenizer with its chat template."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator

from .config import SFTConfig
from .devices import pick_dtype


@contextlib.contextmanager
def generating(model: Any, attention: str) -> Iterator[None]:
    """Inside, the trained model (a PEFT model or a plain one) generates the way its base model did before training:
    with ``attention`` as its attention implementation (training may have switched to eager, slower to generate
    with), and a LoRA adapter merged into the weights (no adapter matmuls on every token). Merging into a bf16 base
    rounds, as a model saved and loaded in bf16 does; the saved model is merged apart from this, in fp32."""
    trained = model.config._attn_implementation
    model.set_attn_implementation(attention)
    merged = hasattr(model, "merge_adapter")
    if merged:
        model.merge_adapter()
    try:
        yield
    finally:
        if merged:
            model.unmerge_adapter()
        model.set_attn_implementation(trained)


def merge_lora(unwrapped: Any, config: SFTConfig, models_dir: Path) -> Any:
    """The adapter merged into the base model. A base trained in bf16 is reloaded in fp32 first, so the saved model
    is the original weights plus the update (merging into bf16 weights would round both)."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from .models import load_model

    if next(unwrapped.base_model.parameters()).dtype == torch.float32:
        return unwrapped.merge_and_unload()
    base = load_model(config.model, models_dir=models_dir, device="cpu", dtype="float32",
                      trust_remote_code=config.trust_remote_code).model
    fp32 = get_peft_model(base, unwrapped.peft_config["default"])
    set_peft_model_state_dict(fp32, get_peft_model_state_dict(unwrapped))
    return fp32.merge_and_unload()


def cast_floats(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype``. Tensors that shared storage (tied input embeddings and output layer) still do,
    so save_pretrained writes them once."""
    cast: dict[tuple[int, torch.Size], torch.Tensor] = {}
    result = {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point():
            key = (tensor.data_ptr(), tensor.shape)
            if key not in cast:
                cast[key] = tensor.to(dtype)
            tensor = cast[key]
        result[name] = tensor
    return result


def save_model(
    accelerator: Accelerator, model: Any, tokenizer: Any, run_dir: Path, config: SFTConfig, base_source: str,
    models_dir: Path,
) -> Any:
    """The merged model (or, with --keep-adapter, the adapter naming its base), and the tokenizer with its template.
    ``model`` is the prepared ``TokenLossModel``. Returns the trained model to generate with from now on: merging an
    fp32 base folds the adapter into it in place, leaving the merged model.

    The model is saved in the dtype the chat loads it in on this device (bf16 on CPU and most GPUs): half of fp32's
    disk, and loading needs no cast. Training kept fp32 weights (or merged in fp32) up to here, so this is the one
    rounding. An adapter stays fp32: it is small, and the loader merges it into the base it loads.
    """
    unwrapped = accelerator.unwrap_model(model).model
    saved_dtype = pick_dtype(accelerator.device)
    generator = unwrapped
    state_dict = None
    if config.method == "lora" and config.keep_adapter:
        # The loader resolves base_model_name_or_path as a spec: the same one this run started from.
        base = config.model if not Path(config.model).expanduser().exists() else base_source
        unwrapped.peft_config["default"].base_model_name_or_path = base
        final = unwrapped
    elif config.method == "lora":
        base = unwrapped.get_base_model()
        final = merge_lora(unwrapped, config, models_dir).to(saved_dtype)
        generator = final if final is base else unwrapped
    else:
        # Gathers FSDP / DeepSpeed shards; the keys lose TokenLossModel's "model." prefix.
        gathered = accelerator.get_state_dict(model)
        state_dict = cast_floats({k.removeprefix("model."): v for k, v in gathered.items()}, saved_dtype)
        final = unwrapped.to(saved_dtype)  # training is over; config.json then names the dtype the weights have
    if hasattr(final, "config"):
        final.config.use_cache = True  # gradient checkpointing turns the KV cache off; the chat needs it
    if accelerator.is_main_process:
        from .models import quiet_transformers  # no tqdm "Writing model shards" bar under our progress

        with quiet_transformers():
            final.save_pretrained(run_dir, state_dict=state_dict)
            tokenizer.save_pretrained(run_dir)
    return generator
