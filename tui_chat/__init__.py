"""tui-chat: chat with a local language model in the terminal, keep every session, fine-tune the model on them.

The packages, by role (the arrows are checked by tests/test_layering.py):
- ``cli``: the `tui-chat` command and its subcommands. Nothing imports it.
- ``chat``: the chat core every front end drives: one ``ChatSession`` per open conversation, the slash commands
  parsed into typed actions, replies streamed into the store. Imports ``inference.contract``, ``sessions``.
- ``inference``: the engine contract, the transformers engine and its decoding pieces, the HTTP engines.
- ``tui``: the Textual chat window (app, stylesheet, screens, widgets). Displays the core; never imports torch.
- ``repl``: the line-oriented front end (prompt-toolkit) and console output shared with `ask`.
- ``training``: `/train` from inside the chat: plan, launch, monitor, summary. Never imports torch when planning.
- ``serve``: `tui-chat serve`, the model behind an OpenAI-compatible HTTP API (Starlette on uvicorn). Imports
  ``inference.contract``; no front end and not the chat core (what it is sent is not stored yet).
"""
