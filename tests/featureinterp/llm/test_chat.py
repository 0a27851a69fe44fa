"""Chat layouts under real tokenizers (SmolLM2's ChatML, Gemma-3's vocabulary) and Gemma-shaped
templates written here: one that rejects the system role and demands alternation (as Gemma-2's
does) and one that folds the system text into the first user turn itself (as Gemma-3's does)."""

from __future__ import annotations

import copy
import math

import pytest

from featureinterp.explain.complexity import REPLY_PREFIX, ComplexityAnalyzer
from featureinterp.llm import chat
from featureinterp.llm.backend import assistant, system, user

# Gemma-2's contract: BOS first, no system role, user/assistant strictly alternating from a user
# turn, the assistant called "model", content trimmed.
GEMMA2_LIKE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set wanted = 'user' if loop.index0 is even else 'assistant' %}"
    "{% if message.role != wanted %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set speaker = 'model' if message.role == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' ~ speaker ~ '\n' ~ (message.content | trim) ~ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Gemma-3's contract: a leading system message is accepted and written at the start of the first
# user turn, then a blank line; otherwise as above.
GEMMA3_LIKE = (
    "{{ bos_token }}"
    "{% if messages[0].role == 'system' %}"
    "{% set preamble = (messages[0].content | trim) ~ '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set preamble = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if (message.role == 'user') != (loop.index0 is even) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set speaker = 'model' if message.role == 'assistant' else message.role %}"
    "{{ '<start_of_turn>' ~ speaker ~ '\n' ~ (preamble if loop.first else '') ~ (message.content | trim)"
    " ~ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

CONVERSATION = [
    system("Rate rules."),
    user("Explanation:\nthe word 'river'"),
    assistant("Complexity:\t0"),
    user("Explanation:\ndates written with digits"),
]


def _with_template(tokenizer, template: str | None):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def gemma2_like(gemma3_tokenizer):
    return _with_template(gemma3_tokenizer, GEMMA2_LIKE)


@pytest.fixture(scope="module")
def gemma3_like(gemma3_tokenizer):
    return _with_template(gemma3_tokenizer, GEMMA3_LIKE)


@pytest.fixture(scope="module")
def smollm2(embedded_model):
    return embedded_model[1]


def test_the_gemma3_gguf_carries_no_chat_template(gemma3_tokenizer):
    assert not gemma3_tokenizer.chat_template
    assert gemma3_tokenizer.bos_token == "<bos>"
    # the turn markers are single control tokens of the vocabulary
    assert len(gemma3_tokenizer("<start_of_turn>", add_special_tokens=False)["input_ids"]) == 1


def test_system_support_is_probed_from_the_template(smollm2, gemma2_like, gemma3_like, gemma3_tokenizer):
    assert chat.supports_system_role(smollm2)
    assert chat.supports_system_role(gemma3_like)  # the template folds it itself
    assert not chat.supports_system_role(gemma2_like)
    assert chat.supports_system_role(gemma3_tokenizer)  # no template: the transcript writes any role
    dropping = _with_template(
        smollm2, "{% for m in messages %}{% if m.role != 'system' %}{{ m.content }}{% endif %}{% endfor %}"
    )
    assert not chat.supports_system_role(dropping)  # silently dropped counts as unsupported


def test_probe_result_is_cached_per_template(gemma2_like, monkeypatch):
    tok = copy.copy(gemma2_like)
    tok.chat_template = GEMMA2_LIKE + "{# a template not probed yet #}"
    calls = []
    real = type(tok).apply_chat_template

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tok), "apply_chat_template", counting)
    assert not chat.supports_system_role(tok) and not chat.supports_system_role(tok)
    chat.render(tok, CONVERSATION)
    assert len(calls) == 2  # one probe, one rendering
    tok.chat_template = GEMMA3_LIKE + "{# changed #}"
    assert chat.supports_system_role(tok) and len(calls) == 3  # a new template is probed afresh


def test_system_is_folded_into_the_first_user_turn_where_rejected(gemma2_like):
    with pytest.raises(Exception, match="System role not supported"):
        gemma2_like.apply_chat_template(CONVERSATION, tokenize=False)
    before = copy.deepcopy(CONVERSATION)
    normalized = chat.normalize_messages(CONVERSATION, gemma2_like)
    assert CONVERSATION == before  # input untouched
    assert normalized == [
        user("Rate rules.\n\nExplanation:\nthe word 'river'"),
        *CONVERSATION[2:],
    ]
    assert chat.render(gemma2_like, CONVERSATION) == (
        "<bos><start_of_turn>user\nRate rules.\n\nExplanation:\nthe word 'river'<end_of_turn>\n"
        "<start_of_turn>model\nComplexity:\t0<end_of_turn>\n"
        "<start_of_turn>user\nExplanation:\ndates written with digits<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_both_gemma_layouts_agree(gemma2_like, gemma3_like):
    """Folding by us (Gemma-2-like) and by the template (Gemma-3-like) give the same text."""
    assert chat.normalize_messages(CONVERSATION, gemma3_like) == CONVERSATION  # left to the template
    assert chat.render(gemma3_like, CONVERSATION) == chat.render(gemma2_like, CONVERSATION)


def test_consecutive_roles_are_merged(gemma2_like, smollm2):
    msgs = [user("a"), user("b"), assistant("c"), assistant("d"), user("e")]
    with pytest.raises(Exception, match="alternate"):
        gemma2_like.apply_chat_template(msgs, tokenize=False)
    assert chat.normalize_messages(msgs, gemma2_like) == [user("a\n\nb"), assistant("c\n\nd"), user("e")]
    assert chat.normalize_messages(msgs, smollm2) == [user("a\n\nb"), assistant("c\n\nd"), user("e")]
    text = chat.render(gemma2_like, [system("s"), *msgs])
    assert text.startswith("<bos><start_of_turn>user\ns\n\na\n\nb<end_of_turn>\n")


@pytest.mark.parametrize("name", ["gemma2_like", "gemma3_like", "gemma3_tokenizer"])
def test_bos_exactly_once_at_the_start(name, request):
    tok = request.getfixturevalue(name)
    ids = chat.prompt_ids(tok, CONVERSATION, REPLY_PREFIX)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids).endswith(REPLY_PREFIX)


def test_chatml_rendering_is_the_template_unchanged(smollm2):
    msgs = CONVERSATION
    want = smollm2.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert chat.render(smollm2, msgs) == want
    assert (
        chat.prompt_ids(smollm2, msgs, "Complexity:\t")
        == smollm2(want + "Complexity:\t", add_special_tokens=False)["input_ids"]
    )
    assert chat.render(smollm2, msgs, add_generation_prompt=False) == smollm2.apply_chat_template(
        msgs, tokenize=False
    )


def test_plain_transcript_without_a_template(smollm2, gemma3_tokenizer):
    bare = _with_template(smollm2, None)
    msgs = [system("S"), user("U")]
    assert chat.render(bare, msgs) == "System: S\n\nUser: U\n\nAssistant: "  # SmolLM2 adds no BOS
    assert chat.render(bare, msgs, add_generation_prompt=False) == "System: S\n\nUser: U\n\n"
    # Gemma's tokenizer adds a BOS by itself: the transcript writes it, once
    assert (
        chat.render(gemma3_tokenizer, msgs, assistant_prefix="x")
        == "<bos>System: S\n\nUser: U\n\nAssistant: x"
    )


@pytest.mark.parametrize("name", ["gemma2_like", "smollm2", "gemma3_tokenizer"])
def test_open_assistant_turn(name, request):
    tok = request.getfixturevalue(name)
    text = chat.render(tok, CONVERSATION, assistant_prefix="Activations: ")
    assert text == chat.render(tok, CONVERSATION) + "Activations: "
    assert chat.render(tok, CONVERSATION, False, assistant_prefix="A") == chat.render(tok, CONVERSATION) + "A"
    if name == "gemma2_like":
        assert text.endswith("<end_of_turn>\n<start_of_turn>model\nActivations: ")


@pytest.mark.parametrize("name", ["gemma2_like", "gemma3_like", "smollm2", "gemma3_tokenizer"])
@pytest.mark.parametrize("prefix", [None, "Activations: "])
def test_split_pieces_concatenate_to_the_full_rendering(name, prefix, request):
    tok = request.getfixturevalue(name)
    content = "Explanation:\ndates written with digits"
    before, after = chat.split_around(
        tok, [*CONVERSATION[:-1], user("<placeholder>")], assistant_prefix=prefix
    )
    assert before + content + after == chat.render(tok, CONVERSATION, assistant_prefix=prefix)
    assert after.endswith(chat.render(tok, [user("x")], assistant_prefix=prefix).rpartition("x")[2])
    # the first user turn carries the folded system text: it lands in `before`
    first_before, _ = chat.split_around(tok, [system("S"), user("?")], assistant_prefix=prefix)
    assert "S" in first_before
    if name == "gemma2_like":
        assert first_before == "<bos><start_of_turn>user\nS\n\n"
        assert after == "<end_of_turn>\n<start_of_turn>model\n" + (prefix or "")


def test_split_pieces_tokenize_to_the_full_ids_at_gemma_boundaries(gemma2_like):
    """At Gemma's turn markers the pieces tokenize separately to the same ids as the whole, so a
    caller knows exactly which positions hold the content."""
    content = "Explanation:\ndates written with digits"
    before, after = chat.split_around(gemma2_like, CONVERSATION, assistant_prefix="Activations: ")

    def ids(text: str) -> list[int]:
        return gemma2_like(text, add_special_tokens=False)["input_ids"]

    pieces = ids(before) + ids(content) + ids(after)
    assert pieces == chat.prompt_ids(gemma2_like, CONVERSATION, "Activations: ")


def test_split_needs_a_user_message(smollm2):
    with pytest.raises(ValueError, match="user message"):
        chat.split_around(smollm2, [system("s")])


def test_complexity_analyzer_runs_under_a_gemma2_like_template(gemma2_like):
    from featureinterp.llm.local import LocalChatBackend
    from featureinterp.presets.architectures import TinySpec, tiny_model

    model = tiny_model(TinySpec("gemma2", vocab_size=len(gemma2_like), n_layers=2))
    backend = LocalChatBackend(model, gemma2_like, "tiny-gemma2")
    analyzer = ComplexityAnalyzer(backend)
    messages = analyzer.messages("dates written with digits")
    assert messages[0]["role"] == "system"
    with pytest.raises(Exception, match="System role not supported"):
        gemma2_like.apply_chat_template(messages, tokenize=False)
    ids = backend.prompt_ids(messages, REPLY_PREFIX)
    assert ids[0] == gemma2_like.bos_token_id and ids.count(gemma2_like.bos_token_id) == 1
    text = gemma2_like.decode(ids)
    assert text.startswith(
        "<bos><start_of_turn>user\n" + analyzer.header[0]["content"] + "\n\nExplanation:\n"
    )
    values = analyzer.rate(["dates written with digits", "the word 'river'"])
    assert len(values) == 2 and all(math.isfinite(v) and 0 <= v <= 5 for v in values)
