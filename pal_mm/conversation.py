"""TRL's conversational values (lists of ``{"role", "content"}`` messages) as text: the ONE rendering
that training, ``pal-mm embed`` / ``eval`` / ``adapt``, ``score``, the reward APIs and the TRL reward
function share, so a conversation gives the same vector and the same reward on every path.

* a **prompt** (prompt tower) that is a conversation is rendered with the chat template of the
  encoder's tokenizer, ending in the generation prompt (``add_generation_prompt=True``: the prompt is
  what the assistant answers); an encoder without a chat template gets ``role: content`` lines;
* a **response** (item tower: ``chosen``, ``rejected``, a completion) that is a conversation is the
  text of its reply: the content of its last ``assistant`` message (the last message when none is
  from the assistant), exactly what TRL passes a reward function as a conversational completion.

:func:`render_value` applies the rule to one value; :func:`chat_tokenizer` finds the tokenizer of an
encoder (``encoder.tokenizer``, a two-tower encoder's ``encoder.text.tokenizer``, or a
sentence-transformers model's). Everything that turns inputs into vectors goes through
:func:`pal_mm.embedding.encode_values`, which calls :func:`render_value`; data files keep their
conversations until then (or are rendered at load with the same function). This module imports
nothing of pal_mm but the error type.
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


def is_message(value: Any) -> bool:
    """True for one ``{role, content}`` dict."""
    return isinstance(value, dict) and "role" in value and "content" in value


def normalize_conversation(messages: Any) -> list[dict]:
    """``[{"role": str, "content": str}, ...]``: roles as strings, contents as text (see
    :func:`content_text`); a one-line error for anything that is not a conversation."""
    if not is_conversation(messages):
        raise PalMMError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages, "
                         f"got {type(messages).__name__}")
    return [{"role": str(m["role"]), "content": content_text(m["content"])} for m in messages]


def flatten_conversation(messages: Any, tokenizer: Any = None, add_generation_prompt: bool = False) -> str:
    """One string from a list of ``{"role": ..., "content": ...}`` messages.

    With a tokenizer that has a chat template, the template renders the messages
    (``apply_chat_template(..., tokenize=False)``); otherwise they are joined as
    ``"role: content"`` lines. A plain string is returned unchanged, so the function can be
    applied to every value of a column that mixes the two formats.
    """
    if isinstance(messages, str):
        return messages
    msgs = normalize_conversation(messages)
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
    if is_message(messages):  # a single message
        return content_text(messages["content"])
    msgs = normalize_conversation(messages)
    for m in reversed(msgs):
        if m["role"] == "assistant":
            return m["content"]
    return msgs[-1]["content"]


# ------------------------------------------------------------------------------------------
# The one rendering
# ------------------------------------------------------------------------------------------
def needs_rendering(value: Any) -> bool:
    """True for a conversation or a single message (anything :func:`render_value` changes)."""
    return is_message(value) or is_conversation(value)


def render_prompt(value: Any, tokenizer: Any = None) -> Any:
    """A prompt as the encoder sees it: a conversation through the chat template with the generation
    prompt (``role: content`` lines without a template); anything else unchanged."""
    if is_message(value):
        value = [value]
    if is_conversation(value):
        return flatten_conversation(value, tokenizer, add_generation_prompt=True)
    return value


def render_response(value: Any) -> Any:
    """A response as the encoder sees it: a conversation (or one message) as its reply's text
    (:func:`last_assistant_text`); anything else unchanged."""
    if needs_rendering(value):
        return last_assistant_text(value)
    return value


def render_value(value: Any, tower: str, tokenizer: Any = None) -> Any:
    """:func:`render_prompt` for the ``"prompt"`` tower, :func:`render_response` for ``"item"``."""
    return render_prompt(value, tokenizer) if tower == "prompt" else render_response(value)


def chat_tokenizer(encoder: Any) -> Any:
    """The tokenizer whose chat template renders an encoder's conversational prompts, or None: the
    first of ``encoder.tokenizer``, ``encoder.text.tokenizer`` (two-tower encoders) and a wrapped
    sentence-transformers model's tokenizer that has a chat template."""
    if encoder is None:
        return None
    for owner in (encoder, getattr(encoder, "text", None)):
        if owner is None:
            continue
        for tok in (getattr(owner, "tokenizer", None), getattr(getattr(owner, "model", None), "tokenizer", None)):
            if tok is not None and getattr(tok, "chat_template", None):
                return tok
    return None
