"""The trainer: fine-tunes and evaluates chat models; it imports neither textual nor the chat database.

Importing it installs the filters that drop torchao's import-time noise (``import_noise``): every process that loads a
model imports this package before torchao.
"""

from .import_noise import drop_import_noise

drop_import_noise()
