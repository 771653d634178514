"""TRL's conversational values (lists of ``{"role", "content"}`` messages) as text.

:func:`flatten_conversation` renders a conversation with a tokenizer's chat template when it has
one, else as ``role: content`` lines; :func:`last_assistant_text` takes a completion's reply.
Used by data validation (:mod:`pal_mm.data`) and the reward-function wrappers (:mod:`pal_mm.rlhf`);
it imports nothing else of pal_mm but the error type.
"""

from __future__ import annotations

from typing import Any

from .errors import PalMMError


def content_text(content: Any) -> str:
    """A message's content as text: a string as is; a list of parts (``{"type": "text",
    "text": ...}`` or plain strings) joined with newlines, non-text parts skipped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise PalMMError(f"message content must be text or a list of parts, got {type(content).__name__}")


def is_conversation(value: Any) -> bool:
    """True for a list of ``{role, content}`` dicts (TRL's conversational format)."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def flatten_conversation(messages: Any, tokenizer: Any = None, add_generation_prompt: bool = False) -> str:
    """One string from a list of ``{"role": ..., "content": ...}`` messages.

    With a tokenizer that has a chat template, the template renders the messages
    (``apply_chat_template(..., tokenize=False)``); otherwise they are joined as
    ``"role: content"`` lines. A plain string is returned unchanged, so the function can be
    applied to every value of a column that mixes the two formats.
    """
    if isinstance(messages, str):
        return messages
    if not is_conversation(messages):
        raise PalMMError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages, "
                         f"got {type(messages).__name__}")
    msgs = [{"role": str(m["role"]), "content": content_text(m["content"])} for m in messages]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as e:  # a template that rejects these roles (e.g. no system role)
            raise PalMMError(f"the tokenizer's chat template failed on this conversation ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def last_assistant_text(messages: Any) -> str:
    """A completion as text: a string as is; for a conversation, the content of the last
    ``assistant`` message (the last message when no role is ``assistant``)."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, dict) and "content" in messages:  # a single message
        return content_text(messages["content"])
    if not is_conversation(messages):
        raise PalMMError(f"a completion must be a string or a list of messages, got {type(messages).__name__}")
    for m in reversed(messages):
        if m.get("role") == "assistant":
            return content_text(m["content"])
    return content_text(messages[-1]["content"])
