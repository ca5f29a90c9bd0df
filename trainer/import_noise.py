"""Messages torch and torchao log while torchao is imported that no user can act on, dropped by two narrow filters.

torchao (pulled in by peft, which transformers imports for its trainer utilities, and by ``--quantize int4``) tries to
load its CUDA-only kernels on every import and logs each failure on a CPU build; registering its enums with torch's
pytree logs a deprecation meant for torchao's authors. Which import pulls torchao in first is decided by third-party
code and changes between versions, so wrapping one import of ours would miss the others: the filters are installed
once, process-wide, when the ``trainer`` package is imported (before any of its modules imports torch), and match
exactly those messages, so every other warning from the same loggers still shows.

One warning is peft's, not torchao's: wrapping a model in LoRA reads transformers' deprecated
``is_gradient_checkpointing`` alias, and transformers warns (FutureWarning) on every run. Only peft can change that
read, so that one message is ignored, by its exact text.
"""

from __future__ import annotations

import logging
import re
import warnings

# logger name -> the messages it logs that are dropped (matched against the formatted message)
NOISE: dict[str, re.Pattern[str]] = {
    # torchao/__init__.py: "Failed to load .../torchao/_C_mxfp8...so: Could not load this library: ..."
    "torchao": re.compile(r"Failed to load \S*torchao\S*\.so: Could not load this library"),
    # torch/utils/_pytree.py: "<enum 'ScaleCalculationMode'> is an Enum subclass ... register_constant() ... deprecated"
    "torch.utils._pytree": re.compile(r"<enum '\w+'> is an Enum subclass and is now natively supported"),
}


# transformers/modeling_utils.py, read by peft's get_peft_model: "`is_gradient_checkpointing` is deprecated and ..."
PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated and will be removed"


class _DropMessage(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def drop_import_noise() -> None:
    """Install the filters (once: a second call changes nothing)."""
    for name, pattern in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))
    warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
