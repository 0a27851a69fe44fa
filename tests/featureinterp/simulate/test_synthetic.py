import numpy as np
import pytest

from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES, discrimination, synthetic_activations

ROW = ["<|endoftext|>", "We", " did", " not", " see", " the", " State", " in", " 1999", " or", " 7", "."]


def test_rules_fire_where_they_say():
    names = [f.name for f in SYNTHETIC_FEATURES]
    acts = synthetic_activations([ROW], list(range(len(names)))).acts.astype(float)[:, 0]
    by = dict(zip(names, acts, strict=True))
    assert by["negation"].nonzero()[0].tolist() == [3]
    assert by["digits"][8] == 5 and by["digits"][10] == 3  # 4 digits fire harder than 1
    assert by["pronouns_we"].nonzero()[0].tolist() == [1]
    assert by["after_the"].nonzero()[0].tolist() == [6]
    assert by["capitalized"].nonzero()[0].tolist() == [6]  # 'We' starts the row: not mid-sentence
    assert by["state_power"].nonzero()[0].tolist() == [6]
    assert all(a[0] == 0 for a in acts)  # BOS column stays silent


def test_unknown_index_is_silent_and_stats_match():
    fa = synthetic_activations([ROW, ROW], [0, 99])
    assert fa.dead() == [99]
    assert fa.row_count.tolist() == [2, 0]
    assert fa.token_freq[0] == pytest.approx(1 / (len(ROW) - 1))
    with pytest.raises(ValueError, match="negative"):
        synthetic_activations([ROW], [-1])


@pytest.mark.slow
def test_embedded_simulator_discriminates(embedded_model, embedded_rows):
    """The embedded simulator scores the correct explanation above a wrong one on average."""
    from featureinterp.data.corpus import decode_tokens
    from featureinterp.simulate.simulator import LocalSimulator

    model, tok = embedded_model
    strings = decode_tokens(tok, np.asarray(embedded_rows))
    sim = LocalSimulator(model, tok, batch_size=8)
    res = discrimination(lambda e, r: sim.simulate(e, r), strings, n_top=4, n_random=3)
    diffs = [r["diff"] for r in res]
    print({r["feature"]: round(r["diff"], 3) for r in res})
    assert np.isfinite(diffs).all()
    assert float(np.mean(diffs)) > 0
