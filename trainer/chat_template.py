"""The chat format: the model's own template, or one default for base models that have none.

Inference and training both call ``ensure_chat_template`` so a base GPT (gpt2, distilgpt2) fine-tuned here chats in
exactly the format it was trained on.
"""

from __future__ import annotations

from typing import Any

# ChatML-style turns, written with the tokenizer's own eos token as the end-of-turn marker so base models need no
# new embeddings: every turn is "<|role|>\n{content}{eos}\n". The generation prompt opens an assistant turn.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give ``tokenizer`` the default template if it has none, and a pad token if it has none. Returns it."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # Padding is always masked out of the loss by the attention mask / labels, so reusing eos is safe here;
        # the training data masks by position, never by comparing ids to pad_token_id.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
