import io

import numpy as np
import polars as pl
import pytest

from featureinterp.simulate.previews import activation_strip, score_strip


def _frame():
    rows = []
    for source in ("positive", "similar_negative", "random"):
        for rank in range(3):
            rows.append(
                {
                    "source": source,
                    "split": "test",
                    "rank": rank,
                    "row": 10 * rank + len(source),
                    "tokens": ["a", " b", " c"],
                    "acts": [0.0, 4.0 if source == "positive" else 0.0, 1.0],
                }
            )
    return pl.DataFrame(rows)


def test_strip_is_a_png_with_one_row_per_record():
    from PIL import Image

    one = activation_strip([("r", ["x", "y"], [0, 5], [1.0, 4.2])])
    three = activation_strip([("r", ["x", "y"], [0, 5], [1.0, 4.2])] * 3)
    assert one.startswith(b"\x89PNG")
    h1, h3 = Image.open(io.BytesIO(one)).size[1], Image.open(io.BytesIO(three)).size[1]
    assert h3 > 2 * h1 * 0.8  # taller with more records


def test_strip_needs_records():
    with pytest.raises(ValueError, match="at least one record"):
        activation_strip([])


def test_score_strip_takes_test_positives_and_similar_negatives_in_rank_order(monkeypatch):
    seen = []
    import featureinterp.simulate.previews as previews

    monkeypatch.setattr(previews, "activation_strip", lambda rows, title: seen.extend(rows) or b"png")
    preds = {"positive": [[0, 1, 2], [0, 5, 0], [3, 3, 3]], "similar_negative": [[1, 1, 1], [2, 2, 2]]}
    assert score_strip(_frame(), preds, max_act=4.0, title="t") == b"png"
    labels = [label for label, *_ in seen]
    assert labels == ["pos 8", "pos 18", "pos 28", "sim. neg 16", "sim. neg 26"]
    assert list(seen[0][2]) == [0, 5, 1]  # quantized truth (4.0 of max 4 -> 5)
    assert np.allclose(seen[3][3], [1, 1, 1])


def test_tick_labels_escape_control_characters_and_stay_short():
    """No glyph is missing (matplotlib warns per missing glyph) and no label outgrows its row."""
    import warnings

    from featureinterp.simulate.previews import LABEL_CHARS, _label, activation_strip

    assert _label("a\tb\nc\x01") == "a\\tb\\nc\\x01"
    assert len(_label(" " * 40)) == LABEL_CHARS and _label(" " * 40).endswith("…")
    tokens = ["\t", "\n\n", "x" * 60, " not", "\r"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph or tight-layout warning fails the test
        png = activation_strip([("r1", tokens, [0, 1, 5, 2, 0], [0, 0, 4, 3, 1])] * 3, title="rule\twith a tab")
    assert png.startswith(b"\x89PNG")
