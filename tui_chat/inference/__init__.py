"""Running a model: the engine contract (``contract``), the transformers engine (``hf_engine``) and its decoding
pieces, and the model process the front ends talk to (``process_engine``). Only ``hf_engine`` and what it imports
touch torch, and only in the process that decodes."""
