"""Running a model: the engine contract (``contract``), the transformers engine (``hf_engine``) and its decoding
pieces, and the engines that reach a model over HTTP (``openai_engine``; the home's server through ``serve.local``).
Only ``hf_engine`` and what it imports touch torch, and only in the process that decodes (the server)."""
