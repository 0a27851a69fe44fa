"""featureinterp.records.formatting: the 0..5 quantization on the global max, token escaping and the
``<start>``/``<end>`` record blocks of the prompts, and the non-zero share of formatted values."""

import pytest

from featureinterp.records.formatting import escape_token, nonzero_fraction, quantize, record_block


def test_quantize_floors_and_clips_on_the_global_max():
    assert quantize([0.0, 0.19, 0.2, 0.99, 1.0, 2.0, -1.0], 1.0).tolist() == [0, 0, 1, 4, 5, 5, 0]
    assert quantize([1.0, 2.0], 0.0).tolist() == [0, 0]  # dead feature: all zero, never NaN


def test_record_block_escapes_tokens_and_reveals():
    block = record_block(["a\tb", "\n", "c"], [1, 0, 3])
    assert block == "\n<start>\na\\tb\t1\n\\n\t0\nc\t3\n<end>\n"
    assert record_block(["x", "y"], [2, 4], reveal=1).splitlines()[2:4] == ["x\t2", "y\tunknown"]
    assert nonzero_fraction([[0, 1], [0, 0, 2]]) == pytest.approx(0.4)


def test_escape_token_and_unknown_placeholders():
    assert escape_token("a\r\nb\tc") == "a\\r\\nb\\tc"
    assert record_block(["p", "q"], None).splitlines()[2:4] == ["p\tunknown", "q\tunknown"]
    assert nonzero_fraction([]) == 0.0
