"""Finding the explanation in a model's reply, as servers and current models really send it.

A structured reply is meant to be ``{"rules": [...]}`` and is, when the backend enforces the schema.
Servers without schema support, and reasoning models behind any server, send more: a reasoning
block first (``<think>... [a, b] ...</think>``, sometimes with the opening tag eaten by the chat
template), prose before and after the JSON with brackets of its own, a fenced block, several drafts
of the list, the list under a wrapper key of the model's choosing, single quotes or trailing commas.

Why a candidate scan instead of "the outermost ``[...]``": the outermost brackets of such a reply
span prose and drafts, which no repair turns into the intended list. Here every ``[`` / ``{`` starts
a candidate, decoded exactly as JSON where it is JSON and repaired (``json_repair``) only where no
candidate decodes; the *last* complete candidate that holds a rule list wins (models revise
forwards: a draft is followed by the answer, and a note after the answer holds no rule list).

Nothing here invents rules: a reply with no usable rule list raises ``ParseError`` saying why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Candidate",
    "ReplyError",
    "json_candidates",
    "split_reasoning",
    "find_rules",
]

_REASONING_TAGS = ("think", "thinking", "reasoning", "reflection")
_BLOCK_RE = re.compile(
    r"<(?P<tag>" + "|".join(_REASONING_TAGS) + r")>(?P<body>.*?)</(?P=tag)>", re.DOTALL | re.IGNORECASE
)
_OPEN_RE = re.compile(r"<(" + "|".join(_REASONING_TAGS) + r")>", re.IGNORECASE)
_CLOSE_RE = re.compile(r"</(" + "|".join(_REASONING_TAGS) + r")>", re.IGNORECASE)
_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(?P<body>.*?)```", re.DOTALL)


class ReplyError(ValueError):
    """No usable JSON in a reply; ``explanations.ParseError`` is its subclass for rule lists."""


def split_reasoning(text: str) -> tuple[str, str]:
    """(answer, reasoning) of a reply: reasoning blocks (``<think>``, ``<thinking>``,
    ``<reasoning>``, ``<reflection>``) are cut out of the answer and joined for audit.

    Two template quirks are handled: a closing tag with no opening one (templates that put
    ``<think>`` into the prompt, so the reply starts inside the block: all before the closing tag
    is reasoning) and an opening tag that is never closed (the reply ran out of tokens while
    reasoning: all after it is reasoning, and the answer may be empty)."""
    reasoning: list[str] = []

    def cut(match: re.Match[str]) -> str:
        reasoning.append(match.group("body").strip())
        return " "

    answer = _BLOCK_RE.sub(cut, text)
    close = _CLOSE_RE.search(answer)
    if close is not None and not _OPEN_RE.search(answer[: close.start()]):
        reasoning.insert(0, answer[: close.start()].strip())
        answer = answer[close.end() :]
    opened = _OPEN_RE.search(answer)
    if opened is not None:
        reasoning.append(answer[opened.end() :].strip())
        answer = answer[: opened.start()]
    return answer.strip(), "\n\n".join(r for r in reasoning if r)


@dataclass(frozen=True)
class Candidate:
    """A JSON value found in a reply: its span and whether it needed repair."""

    start: int
    end: int
    value: Any
    repaired: bool = False


def _balanced_end(text: str, start: int) -> int | None:
    """Index after the bracket closing the one at ``start`` (quotes of either kind respected),
    or None when the reply ends first (a truncated value)."""
    closing = {"[": "]", "{": "}"}
    stack = [closing[text[start]]]
    quote: str | None = None
    i = start + 1
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            # an apostrophe inside a word ("model's") is prose, not a quote
            if ch == '"' or not (text[i - 1].isalnum() and i + 1 < len(text) and text[i + 1].isalnum()):
                quote = ch
        elif ch in closing:
            stack.append(closing[ch])
        elif ch in "]}":
            if ch != stack[-1]:
                return None
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    return None


def json_candidates(text: str) -> Iterator[Candidate]:
    """Every JSON array or object starting in ``text``, in order of position (nested ones too).

    Exact JSON first (``strict=False``: grammars can let raw control characters into strings).
    Where a bracketed span is not JSON, ``json_repair`` gets that span alone (never the prose
    around it), and only a container value of the same kind counts."""
    import json_repair

    decoder = json.JSONDecoder(strict=False)
    end: int | None
    for match in re.finditer(r"[\[{]", text):
        start = match.start()
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            end = _balanced_end(text, start)
            if end is None:
                continue
            try:
                value = json_repair.loads(text[start:end])
            except Exception:  # noqa: BLE001 - json_repair raises assorted types on junk
                continue
            kind = list if text[start] == "[" else dict
            if not isinstance(value, kind) or not value:
                continue
            yield Candidate(start, end, value, repaired=True)
            continue
        yield Candidate(start, end, value)


def find_rules(
    text: str, validate: Callable[[list[Any]], Any], *, wrapper_extra: tuple[str, ...] = ()
) -> tuple[Any, dict[str, Any]]:
    """(validated rules, the object that held them or ``{}``) of the last rule list in a reply.

    A rule list is a JSON list that ``validate`` accepts (it raises ``ReplyError`` otherwise),
    found bare, under ``"rules"``, or under the single key of a one-key object (``{"explanation":
    [...]}``); objects may also carry the keys in ``wrapper_extra`` (a tree child's
    ``"improvement"``). Fenced blocks are searched first: a fence is the model saying "this is the
    answer". Of the candidates that hold a rule list, the last outermost one wins; if none does,
    the error of the last rule-like candidate says why (or that the reply has no JSON list)."""
    answer, reasoning = split_reasoning(text)
    if not answer:
        raise ReplyError(
            "the reply is empty after its reasoning block (did the reasoning use the whole token "
            "budget? raise max_tokens)"
            if reasoning
            else "the reply is empty"
        )
    fenced = [m.group("body") for m in _FENCE_RE.finditer(answer)]
    last_error: str | None = None
    for haystack in [*fenced, answer] if fenced else [answer]:
        found: list[tuple[Candidate, Any, dict[str, Any]]] = []
        for cand in json_candidates(haystack):
            rules, holder = _rule_list(cand.value, wrapper_extra)
            if rules is None:
                continue
            try:
                found.append((cand, validate(rules), holder))
            except ReplyError as err:
                last_error = str(err)
        outer = [f for f in found if not any(o[0].start < f[0].start and f[0].end <= o[0].end for o in found)]
        if outer:
            _, rules, holder = outer[-1]
            return rules, holder
    if last_error is not None:
        raise ReplyError(last_error)
    raise ReplyError(f"no JSON list of rules in reply: {answer[:80]!r}")


def _rule_list(value: Any, extra: tuple[str, ...]) -> tuple[list[Any] | None, dict[str, Any]]:
    """The candidate's rule list (a list of objects), bare or in a wrapper object; (None, {})."""
    if isinstance(value, list):  # an empty list counts: the validator says "no rules"
        return (value, {}) if all(isinstance(v, dict) for v in value) else (None, {})
    if not isinstance(value, dict):
        return None, {}
    if isinstance(value.get("rules"), list):
        return value["rules"], value
    keys = [k for k in value if k not in extra]
    if len(keys) == 1 and isinstance(value[keys[0]], list):
        inner = value[keys[0]]
        return (inner, value) if inner and all(isinstance(v, dict) for v in inner) else (None, {})
    return None, {}
