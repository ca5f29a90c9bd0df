"""The chat core: what a conversation is and every rule about it, shared by the window, the REPL and `ask`.

Front ends display and collect input; they never decide a rule. Imports ``sessions`` and ``inference.contract``
(never torch, Textual or prompt-toolkit).
"""
