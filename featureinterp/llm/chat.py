"""Conversations laid out so that every local model's chat template accepts them.

The explainers and the complexity analyzer speak in OpenAI-shaped messages with a ``system`` turn,
but chat templates disagree on what they accept: Gemma-2's raises "System role not supported" and
insists that user and assistant turns alternate, Gemma-3's folds the system text into the first
user turn itself, ChatML-style templates (SmolLM2, Qwen) take anything, and a base model's tokenizer
has no template at all. This module is the one place that turns messages into model text for local
models, so every caller gets the same, accepted layout:

- ``normalize_messages``: folds system text into the first user turn when (and only when) the
  template rejects or drops the system role -- found by rendering a tiny probe conversation, never
  by model name, so an unknown checkpoint is handled by what its template does -- and merges
  consecutive turns of one role. Folding writes the system text, a blank line, then the user text,
  as the paper does for Gemma.
- ``render`` / ``prompt_ids``: the template's text (its BOS included when it writes one, so token
  ids come from tokenizing with ``add_special_tokens=False``), optionally ending in an *open*
  assistant turn that already starts with given text (``assistant_prefix``).
- ``split_around``: the text before and after the last user message's content, so a caller that
  needs exact token positions (the all-at-once simulator) can tokenize the pieces separately.

Servers (``featureinterp.llm.api``) apply their own templates and never come through here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from featureinterp.llm.backend import Message

__all__ = [
    "normalize_messages",
    "prompt_ids",
    "render",
    "split_around",
    "supports_system_role",
]

_PROBE_SYSTEM = "featureinterp-probe-system-9f2c"
_PROBE_USER = "featureinterp-probe-user-9f2c"
_SLOT = "featureinterp-split-slot-4b7e"
"""Stands in for the content ``split_around`` cuts out; no real prompt contains it."""

_system_support: dict[str, bool] = {}
_system_support_lock = threading.Lock()


def _template(tokenizer: Any) -> str | None:
    """The chat template ``apply_chat_template`` would use, or None for a tokenizer without one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.get_chat_template()


def supports_system_role(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a system message (True without a template:
    the plain transcript writes any role).

    Probed by rendering a system + user conversation: a template that raises (Gemma-2's
    ``raise_exception('System role not supported')``) or silently leaves the system text out does
    not support it. The answer is cached per template text, so a template installed later on the
    same tokenizer is probed afresh.
    """
    import jinja2

    template = _template(tokenizer)
    if template is None:
        return True
    with _system_support_lock:
        known = _system_support.get(template)
    if known is not None:
        return known
    probe = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": _PROBE_USER}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        supported = _PROBE_SYSTEM in text
    except jinja2.TemplateError:
        supported = False
    with _system_support_lock:
        _system_support[template] = supported
    return supported


def normalize_messages(messages: Sequence[Message], tokenizer: Any) -> list[Message]:
    """``messages`` in a layout the tokenizer's chat template accepts (new dicts; input untouched).

    - Where the template does not support the system role, system messages become user text:
      a leading system message ends up as the start of the first user turn, separated from the
      user's own text by a blank line (the paper's layout for Gemma).
    - Consecutive messages of one role are merged, joined by a blank line, always (not only for
      templates that demand alternation), so a conversation reads the same under every template.
    """
    fold_system = not supports_system_role(tokenizer)
    out: list[Message] = []
    for message in messages:
        role = message["role"]
        if fold_system and role == "system":
            role = "user"
        if out and out[-1]["role"] == role:
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{message['content']}"}
        else:
            out.append({**message, "role": role})
    return out


def _implicit_bos(tokenizer: Any) -> str:
    """The BOS text a tokenizer adds by itself (Gemma's, Llama's), or "" (GPT-2, SmolLM2).

    The plain transcript is tokenized with ``add_special_tokens=False`` like template text, so the
    BOS a base model was trained with has to be written into the text.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if not bos:
        return ""
    with_special = tokenizer("x")["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    adds_bos = with_special[:1] == [tokenizer.bos_token_id] and without[:1] != [tokenizer.bos_token_id]
    return bos if adds_bos else ""


def render(
    tokenizer: Any,
    messages: Sequence[Message],
    add_generation_prompt: bool = True,
    *,
    assistant_prefix: str | None = None,
) -> str:
    """The model text of ``messages`` after ``normalize_messages``.

    With a chat template this is exactly what the template writes, its BOS included where it writes
    one: tokenize the result with ``add_special_tokens=False`` (``prompt_ids`` does), or the BOS is
    doubled. A tokenizer without a template gets a plain transcript, ``"Role: content\\n\\n"`` per
    message then ``"Assistant: "``, preceded by the BOS the tokenizer would add by itself.

    ``assistant_prefix``: end in an *open* assistant turn whose reply already starts with this text
    (e.g. ``"Activations: "`` or the complexity prompt's ``"Complexity:\\t"``): the generation prompt
    followed by the text, no end-of-turn, so the model's next token continues it. The open turn is
    always a new turn after ``messages``; giving it implies ``add_generation_prompt``.
    """
    msgs = normalize_messages(messages, tokenizer)
    if assistant_prefix is not None:
        add_generation_prompt = True
    if _template(tokenizer) is not None:
        text = tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    else:
        text = _implicit_bos(tokenizer) + "".join(
            f"{m['role'].capitalize()}: {m['content']}\n\n" for m in msgs
        )
        if add_generation_prompt:
            text += "Assistant: "
    return text + (assistant_prefix or "")


def prompt_ids(tokenizer: Any, messages: Sequence[Message], reply_prefix: str = "") -> list[int]:
    """Token ids of ``messages`` followed by the start of the assistant's reply, ``reply_prefix``
    (``render`` with ``assistant_prefix=reply_prefix``, tokenized without added special tokens)."""
    text = render(tokenizer, messages, assistant_prefix=reply_prefix)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def split_around(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    assistant_prefix: str | None = None,
    add_generation_prompt: bool = True,
) -> tuple[str, str]:
    """The rendering of ``messages`` cut around the content of its LAST user message.

    Returns ``(before, after)`` with ``before + content + after == render(tokenizer, messages, ...)``
    for that content (same keyword arguments): ``before`` holds everything up to the content --
    BOS, earlier turns, a system text folded into this turn, the turn's header -- and ``after``
    the turn's end, any later turns and the generation prompt (then ``assistant_prefix``). The
    content given in ``messages`` is not used, so it may be a placeholder.

    Why: the simulator needs the token positions of the rule and of the records exactly, so it
    tokenizes header, content and assistant-start pieces separately and concatenates the ids
    (what the model then sees; at piece boundaries this can differ from tokenizing the joined
    text). The content is inserted verbatim: a template that trims message content (Gemma's do)
    would have trimmed it, so content with surrounding whitespace renders differently.
    """
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("split_around needs a user message to cut around")
    slotted = [dict(m) for m in messages]
    slotted[last_user]["content"] = _SLOT
    text = render(tokenizer, slotted, add_generation_prompt, assistant_prefix=assistant_prefix)
    if text.count(_SLOT) != 1:  # a template that drops or repeats user content cannot be cut
        raise ValueError(f"the chat template wrote the last user message {text.count(_SLOT)} times, not once")
    before, after = text.split(_SLOT)
    return before, after
