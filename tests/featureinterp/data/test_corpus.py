import numpy as np
import pytest

from featureinterp.config import CorpusSpec
from featureinterp.data.corpus import build_tokens, check_token_rows, load_documents, token_rows
from featureinterp.errors import ConfigError
from featureinterp.presets import get_preset


def test_text_folder_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph here\n\nsecond one\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("third é non-ascii\n\nfourth")
    docs = load_documents(CorpusSpec(source="text_dir", path=str(tmp_path)))
    assert docs == ["first paragraph here", "second one", "fourth"]


def test_missing_or_empty_folder_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_documents(CorpusSpec(source="text_dir", path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="no \\*.txt or \\*.md"):
        load_documents(CorpusSpec(source="text_dir", path=str(tmp_path)))


def test_rows_never_span_documents_and_start_with_bos(embedded_model):
    tok = embedded_model[1]
    docs = ["one two three four five six seven eight nine ten eleven twelve"] * 3 + ["short"]
    rows = token_rows(docs, tok, seq_len=4, n_rows=6, bos_id=0, seed=1)
    assert rows.shape == (6, 5) and rows.dtype == np.int32 and (rows[:, 0] == 0).all()
    doc_ids = tok(docs[0], add_special_tokens=False)["input_ids"]
    windows = {tuple(doc_ids[i : i + 4]) for i in range(0, len(doc_ids) - 3, 4)}
    assert {tuple(r) for r in rows[:, 1:].tolist()} <= windows  # every row is a window of one document


def test_too_small_and_empty_corpus_are_clear(embedded_model):
    tok = embedded_model[1]
    with pytest.raises(ConfigError, match=r"corpus too small: \d+ rows .* n_rows=1,000"):
        token_rows(["a few words only"], tok, seq_len=32, n_rows=1000, bos_id=0)
    with pytest.raises(ConfigError, match="corpus is empty"):
        token_rows([], tok, seq_len=32, n_rows=10, bos_id=0)


def test_embedded_large_corpus_gives_20k_rows_deterministically(embedded_model):
    tok = embedded_model[1]
    preset = get_preset("embedded-large")
    rows = build_tokens(preset, tok)
    assert rows.shape == (20_000, 33)
    assert not check_token_rows(rows, 20_000, 33, 0, tok.all_special_ids)
    assert np.array_equal(rows[:50], build_tokens(preset, tok)[:50])
    texts = tok.batch_decode(rows[:200, 1:].tolist())
    assert sum(t.isascii() for t in texts) == 200


def test_row_check_reports_each_problem():
    rows = np.full((3, 5), 7, dtype=np.int32)
    rows[:, 0] = 1
    assert check_token_rows(rows, 3, 5, 1, [0, 1]) == []
    assert "shape" in check_token_rows(rows, 4, 5, 1, [0, 1])[0]
    bad = rows.copy()
    bad[1, 0] = 9
    bad[2, 3] = 0
    problems = check_token_rows(bad, 3, 5, 1, [0, 1])
    assert any("do not start with BOS" in p for p in problems) and any("special token" in p for p in problems)
