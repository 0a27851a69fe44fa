"""Figures 3-5: summary numbers against hand computation, written files, coverage captions, errors."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import polars as pl
import pytest
from PIL import Image

from featureinterp.figures.paper import (
    ALL_LAYERS,
    CONDITIONS,
    METHODS,
    SOURCES,
    fig3,
    fig4,
    fig5,
    t_quantile,
)

NAN = float("nan")
T_95_DF3 = 2.353363434801826  # Student t quantile 0.95 with 3 degrees of freedom (tables)


def row(layer="L00", feature=0, method="one_shot", condition="structured", rule_cap=5, source="similar_negative",
        score=0.5, fp_rate=0.0, complexity=1.0, n_rules=1):  # fmt: skip
    return dict(
        layer=layer, feature=feature, method=method, condition=condition, rule_cap=rule_cap, source=source,
        score=score, fp_rate=fp_rate, complexity=complexity, n_rules=n_rules,
    )  # fmt: skip


def results(rng: np.random.Generator, layers=("L12", "L00", "L03"), n_features=5) -> pl.DataFrame:
    """A long table like the pipeline's: fig3's six sources, fig4's conditions and fig5's cap sweep."""

    def draw():
        return NAN if rng.random() < 0.15 else float(rng.uniform(-0.3, 0.9))

    rows = []
    for layer, feature, method in product(layers, range(n_features), METHODS):
        for source in SOURCES:  # fig3 (the similar_negative row doubles as fig4/fig5's structured cap-5 row)
            rows.append(
                row(layer, feature, method, source=source, score=draw(), fp_rate=float(rng.uniform(0, 0.2)))
            )
        for condition in CONDITIONS[:1] + CONDITIONS[2:]:
            rows.append(row(layer, feature, method, condition, score=draw()))
        if method == "one_shot":
            for cap in range(1, 5):
                rows.append(
                    row(layer, feature, rule_cap=cap, score=draw(), complexity=float(rng.uniform(0, 5)))
                )
    return pl.DataFrame(rows)


def assert_png(path, min_size=(300, 200)):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        assert image.size[0] <= 4000 and image.size[1] <= 4000


# ---------------------------------------------------------------- fig4


def test_fig4_counts_undefined_as_zero_with_student_t_interval(tmp_path):
    df = pl.DataFrame(
        [row("L00", f, score=s) for f, s in enumerate([0.5, NAN, 0.2, 0.7])]
        + [row("L01", f, score=s) for f, s in enumerate([0.1, 0.3])]
        + [row("L00", 0, "tree", score=0.4)]
        + [row("L00", 9, score=0.99, source="random")]  # another test set: ignored
        + [row("L00", 9, score=-0.99, rule_cap=2)]  # fig5's cap sweep: ignored (highest cap is 5)
    )
    res = fig4(df, tmp_path)
    cell = res.summary.filter(method="one_shot", condition="structured", layer="L00").row(0, named=True)
    values = np.array([0.5, 0.0, 0.2, 0.7])
    assert (cell["n"], cell["n_nan"]) == (4, 1)
    assert cell["mean_score"] == pytest.approx(0.35)
    sem = values.std(ddof=1) / 2
    assert cell["sem"] == pytest.approx(sem)
    assert cell["ci_halfwidth"] == pytest.approx(sem * T_95_DF3)
    assert cell["ci_halfwidth"] == pytest.approx(0.365846, abs=1e-6)

    pooled = res.summary.filter(method="one_shot", layer=ALL_LAYERS).row(0, named=True)
    assert (pooled["n"], pooled["n_nan"]) == (6, 1)
    assert pooled["mean_score"] == pytest.approx(0.3)
    tree = res.summary.filter(method="tree", layer="L00").row(0, named=True)
    assert tree["n"] == 1 and tree["mean_score"] == pytest.approx(0.4) and math.isnan(tree["ci_halfwidth"])
    missing = res.summary.filter(method="tree", layer="L01").row(0, named=True)  # no result: kept, n = 0
    assert missing["n"] == 0 and math.isnan(missing["mean_score"])
    assert res.summary["expected"].is_null().all() and not res.incomplete
    assert "1 undefined scores counted as 0" in res.caption

    narrower = fig4(df, tmp_path / "c80", confidence=0.8).summary
    cell80 = narrower.filter(method="one_shot", layer="L00").row(0, named=True)
    assert cell80["ci_halfwidth"] == pytest.approx(sem * 1.6377443536962102)
    assert_png(res.png)


def test_fig4_pooled_mean_matches_numpy_on_random_results(tmp_path):
    df = results(np.random.default_rng(4))
    res = fig4(df, tmp_path, expected=5)
    for method, condition in product(METHODS, CONDITIONS):
        scores = df.filter(method=method, condition=condition, source="similar_negative", rule_cap=5)["score"]
        values = np.nan_to_num(scores.to_numpy(), nan=0.0)
        got = res.summary.filter(method=method, condition=condition, layer=ALL_LAYERS).row(0, named=True)
        assert got["n"] == 15 and got["expected"] == 15 and got["n_nan"] == int(scores.is_nan().sum())
        assert got["mean_score"] == pytest.approx(values.mean())
        sem = values.std(ddof=1) / math.sqrt(15)
        assert got["ci_halfwidth"] == pytest.approx(sem * t_quantile(0.95, 14))
    assert res.summary["layer"].unique(maintain_order=True).to_list() == ["L00", "L03", "L12", ALL_LAYERS]
    assert not res.incomplete and res.caption.startswith("complete")


def test_fig4_caption_says_n_of_m_when_results_are_missing(tmp_path):
    df = pl.DataFrame([row("L00", f, score=0.1 * f) for f in range(4)] + [row("L05", f) for f in range(2)])
    res = fig4(df, tmp_path, expected=4)
    assert res.incomplete
    assert "2 of 4 features" in res.caption and "6 of 8 results" in res.caption
    assert res.summary.filter(layer="L05")["n"].item() == 2
    assert res.summary.filter(layer=ALL_LAYERS)["expected"].item() == 8
    assert (res.summary.filter(pl.col("layer") != ALL_LAYERS)["expected"] == 4).all()
    noted = fig4(df, tmp_path, expected=4, definitions="tree stop score tested after each level (paper)")
    assert noted.caption.endswith("; tree stop score tested after each level (paper)")


# ---------------------------------------------------------------- fig3


def test_fig3_false_positives_per_sentence_and_score_nan_policy(tmp_path):
    df = pl.DataFrame(
        [row("L10", f, source="similar_negative", score=s, fp_rate=r)
         for f, s, r in [(0, 0.2, 0.1), (1, NAN, 0.05), (2, 0.6, NAN)]]
        + [row("L2", 0, source="similar", score=0.3, fp_rate=0.25)]
        + [row("L2", 0, "tree", source="similar", score=0.1, fp_rate=0.0)]
    )  # fmt: skip
    res = fig3(df, tmp_path, expected=3)
    cell = res.summary.filter(method="one_shot", source="similar_negative", layer="L10").row(0, named=True)
    assert (cell["n"], cell["n_nan"], cell["n_fp_nan"]) == (3, 1, 1)
    assert cell["mean_score"] == pytest.approx(0.4)  # undefined dropped, not zeroed
    assert cell["mean_fp_per_sentence"] == pytest.approx(0.075 * 32)
    other = fig3(df, tmp_path / "t10", tokens_per_record=10).summary
    assert other.filter(source="similar", layer="L2", method="one_shot")["mean_fp_per_sentence"].item() == 2.5
    # layers by their number, sources in the paper's order, a method x source x layer grid
    assert res.summary["layer"].unique(maintain_order=True).to_list() == ["L2", "L10"]
    assert res.summary["source"].unique(maintain_order=True).to_list() == ["similar", "similar_negative"]
    assert res.summary.height == 2 * 2 * 2
    assert res.incomplete and "0 of 3 features" in res.caption
    assert_png(res.png)


def test_fig3_means_match_numpy_on_random_results(tmp_path):
    df = results(np.random.default_rng(3))
    res = fig3(df, tmp_path, expected=5)
    assert res.summary.height == len(METHODS) * len(SOURCES) * 3 and (res.summary["n"] == 5).all()
    for method, source, layer in [
        ("tree", "random", "L03"),
        ("one_shot", "similar_negative_projected", "L12"),
    ]:
        part = df.filter(method=method, source=source, layer=layer, rule_cap=5)
        got = res.summary.filter(method=method, source=source, layer=layer).row(0, named=True)
        scores = part["score"].to_numpy()
        expect = np.nanmean(scores) if (~np.isnan(scores)).any() else NAN
        np.testing.assert_allclose(got["mean_score"], expect)
        assert got["mean_fp_per_sentence"] == pytest.approx(part["fp_rate"].mean() * 32)
        assert got["n_nan"] == int(np.isnan(scores).sum())
    assert not res.incomplete and res.summary["expected"].to_list() == [5] * res.summary.height
    assert_png(res.png)


def test_fig3_draws_the_generated_source_on_its_slice_without_calling_the_figure_incomplete(tmp_path):
    """The generated source runs on one feature per layer of one method: Figure 3 draws it as a
    seventh line, judges completeness on the paper's six sources, and says what it covers."""
    df = results(np.random.default_rng(3))
    extra = [row(layer, 0, "one_shot", source="generated", score=0.3, fp_rate=0.1) for layer in ("L00", "L03", "L12")]
    res = fig3(pl.concat([df, pl.DataFrame(extra)], how="diagonal_relaxed"), tmp_path, expected=5)
    gen = res.summary.filter(source="generated", method="one_shot")
    assert gen["n"].to_list() == [1, 1, 1] and gen["mean_score"].to_list() == pytest.approx([0.3] * 3)
    assert not res.incomplete and "generated counterexamples (ours, dotted): 1-1 features per cell, 3 cells" in res.caption
    assert_png(res.png)


# ---------------------------------------------------------------- fig5


def test_fig5_monotone_scores_by_hand(tmp_path):
    sweep = {
        0: [0.2, 0.5, 0.4],  # best 0.5
        1: [0.3, NAN, 0.6],  # best 0.6; the undefined cap-2 score does not break the running max
        2: [NAN, 0.9, 0.9],  # skipped: cap-1 score undefined
        3: [-0.1, 0.0, -0.2],  # skipped: best score <= 0
    }
    df = pl.DataFrame(
        [row("L07", f, rule_cap=c + 1, score=s, complexity=float(c + f)) for f, ss in sweep.items() for c, s in enumerate(ss)]
        + [row("L07", 0, "tree", rule_cap=1, score=0.0)]  # another method: ignored
    )  # fmt: skip
    res = fig5(df, tmp_path, expected=4)
    feats = res.tables["features"]
    f0 = feats.filter(feature=0).sort("rule_cap")
    assert f0["mono_score"].to_list() == pytest.approx([0.2, 0.5, 0.5])
    assert f0["mono_prop"].to_list() == pytest.approx([0.4, 1.0, 1.0])
    assert f0["score_prop"].to_list() == pytest.approx([0.4, 1.0, 0.8])
    f1 = feats.filter(feature=1).sort("rule_cap")
    assert f1["mono_score"].to_list() == pytest.approx([0.3, 0.3, 0.6])
    assert f1["mono_prop"].to_list() == pytest.approx([0.5, 0.5, 1.0])
    assert feats.filter(pl.col("feature") >= 2)["mono_score"].is_nan().all()
    assert feats.filter("kept")["feature"].unique().sort().to_list() == [0, 1]

    cap2 = res.summary.filter(rule_cap=2).row(0, named=True)
    assert (cap2["n"], cap2["n_nan"], cap2["n_kept"], cap2["n_skipped"]) == (4, 1, 2, 2)
    assert cap2["mean_score"] == pytest.approx((0.5 + 0.9 + 0.0) / 3)  # every feature, undefined dropped
    assert cap2["mean_complexity"] == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert cap2["mean_mono_score"] == pytest.approx(0.4)  # kept features only
    assert cap2["mean_mono_prop"] == pytest.approx(0.75)
    assert cap2["mean_score_prop"] == pytest.approx(1.0)
    assert res.summary["rule_cap"].to_list() == [1, 2, 3]
    assert "2 of 4 features skipped" in res.caption and not res.incomplete
    assert res.files["features"].exists() and pl.read_parquet(res.files["features"]).equals(feats)
    assert_png(res.png)

    # the paper's other panels: rules needed for 90% of the best score (feature 0: cap 2 reaches
    # 1.0; feature 1: only cap 3), and the cap-3 complexity with its 80% t band over the 4 features
    layer = res.tables["layers"].row(0, named=True)
    assert layer["mean_rules_for_share"] == pytest.approx(2.5) and layer["n_rules_for_share"] == 2
    assert layer["rules_for_share_ci"] == pytest.approx(0.5 * t_quantile(0.9, 1))  # sem of (2, 3) = 0.5
    comp = np.array([2.0, 3.0, 4.0, 5.0])  # cap 3: complexity c + f with c = 2
    sem = comp.std(ddof=1) / 2
    assert layer["mean_complexity"] == pytest.approx(3.5)
    assert layer["complexity_ci"] == pytest.approx(sem * t_quantile(0.9, 3))
    assert_png(res.files["panels"])


def test_fig5_reports_missing_caps_and_features(tmp_path):
    df = results(np.random.default_rng(5), n_features=3)
    df = df.filter(~((pl.col("layer") == "L03") & (pl.col("rule_cap") == 3)))  # one cell lost entirely
    res = fig5(df, tmp_path, expected=3)
    assert res.summary.height == 3 * 5 and res.summary.filter(layer="L03", rule_cap=3)["n"].item() == 0
    assert res.incomplete and "0 of 3 features" in res.caption and "1 of 15 cells short" in res.caption
    assert res.summary["layer"].unique(maintain_order=True).to_list() == ["L00", "L03", "L12"]


def test_fig4_draws_test_record_intervals_and_marks_comparisons_they_cannot_separate(tmp_path):
    """Two features per cell with stored intervals: tree beats one-shot by 0.3 under structured,
    with half-widths 0.1 each (the means' half-widths sqrt(2 x 0.1²) / 2 ≈ 0.071, reach 0.14):
    separable; under unstructured by 0.05: not. The comparison table and the caption say so."""

    def rows(method, condition, score, hw):
        return [row("L00", f, method, condition, score=score) | {"ci_low": score - hw, "ci_high": score + hw} for f in (0, 1)]

    df = pl.DataFrame(
        rows("one_shot", "structured", 0.2, 0.1) + rows("tree", "structured", 0.5, 0.1)
        + rows("one_shot", "unstructured", 0.2, 0.1) + rows("tree", "unstructured", 0.25, 0.1)
    )  # fmt: skip
    res = fig4(df, tmp_path)
    cell = res.summary.filter(layer="L00", method="tree", condition="structured")
    assert cell["record_halfwidth"].item() == pytest.approx(math.sqrt(2 * 0.1**2) / 2)
    comp = res.tables["comparisons"].filter(layer="L00", kind="tree vs one-shot")
    by_condition = dict(zip(comp["b_condition"], comp["overlap"], strict=True))
    assert by_condition == {"structured": False, "unstructured": True}
    assert comp.filter(b_condition="structured")["difference"].item() == pytest.approx(0.3)
    # the unstructured vs structured comparison of one-shot: equal means, overlapping
    assert res.tables["comparisons"].filter(layer="L00", kind="unstructured vs structured", b_method="one_shot")["overlap"].item()
    assert "comparisons" in res.caption and "lie within those intervals" in res.caption
    # a table from before intervals were stored: no interval, no verdict, no caption claim
    old = fig4(df.drop("ci_low", "ci_high"), tmp_path / "old")
    assert old.tables["comparisons"]["overlap"].null_count() == old.tables["comparisons"].height
    assert "lie within" not in old.caption


# ---------------------------------------------------------------- files and errors


def test_files_are_replaced_atomically_without_leftovers(tmp_path):
    df = results(np.random.default_rng(1), layers=("L01",), n_features=2)
    first = fig4(df, tmp_path)
    second = fig4(df.with_columns(score=pl.lit(0.25)), tmp_path)
    assert first.png == second.png
    assert pl.read_parquet(second.files["summary"])["mean_score"].to_list() == pytest.approx([0.25] * 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig4.parquet", "fig4.png", "fig4_comparisons.parquet"]


@pytest.mark.parametrize(
    "figure, column, value",
    [(fig3, "condition", "structured"), (fig4, "source", "similar_negative"), (fig5, "method", "one_shot")],
)
def test_empty_and_incomplete_inputs_raise(figure, column, value, tmp_path):
    df = results(np.random.default_rng(2), layers=("L00",), n_features=1)
    with pytest.raises(ValueError, match=f"{figure.__name__}: the results table is empty"):
        figure(df.clear(), tmp_path)
    with pytest.raises(ValueError, match=f"{figure.__name__}: .*lacks required column.*score"):
        figure(df.drop("score"), tmp_path)
    with pytest.raises(ValueError, match=f"{figure.__name__}: no results with {column} == '{value}'"):
        figure(df.filter(pl.col(column) != value), tmp_path)
    with pytest.raises(ValueError, match="more than once"):
        figure(pl.concat([df, df]), tmp_path)
    with pytest.raises(ValueError, match="expected must be a positive"):
        figure(df, tmp_path, expected=0)
    assert not any(tmp_path.iterdir())  # nothing drawn


def test_fig3_requires_false_positive_rates_and_fig4_a_known_source(tmp_path):
    df = results(np.random.default_rng(2), layers=("L00",), n_features=1)
    with pytest.raises(ValueError, match="fp_rate"):
        fig3(df.drop("fp_rate"), tmp_path)
    fig4(df.drop("fp_rate", "complexity", "n_rules"), tmp_path)  # fig4 needs neither
    with pytest.raises(ValueError, match="no results with source == 'nowhere'"):
        fig4(df, tmp_path, source="nowhere")
    with pytest.raises(ValueError, match="no results with rule_cap == 7"):
        fig4(df, tmp_path, rule_cap=7)


def test_fig3_orders_the_sources_records_produce_as_documented(tmp_path):
    """Figure 3's legend order is the documented one for the source names records really write
    (a stale name list used to send them to the alphabetical fallback)."""
    from featureinterp.records.sources import COMPLEMENTARY_SOURCES

    documented = COMPLEMENTARY_SOURCES  # records.py's documented order, what records write
    df = pl.DataFrame(
        [
            row(feature=f, method=m, source=s)
            for f in range(2)
            for m in METHODS
            for s in reversed(COMPLEMENTARY_SOURCES)
        ]
    )
    summary = fig3(df, tmp_path).summary
    assert tuple(summary["source"].unique(maintain_order=True)) == documented
    assert SOURCES == documented and len(documented) == 6


def test_uncapped_results_join_every_cap_and_keep_a_null_cap(tmp_path):
    """Free-text explanations ran uncapped: their rows say so (null cap) and still join fig4's
    comparison at the structured conditions' cap."""
    from featureinterp.figures.common import result_frame, result_rows

    score = {"layer_key": "L00", "feature": 1, "condition": "one_shot_unstructured", "method": "one_shot",
             "figure_condition": "unstructured", "rule_cap": None,
             "per_source": {"similar_negative": {"score": 0.4, "fp_rate": 0.1}}}  # fmt: skip
    rows = result_rows(score)
    assert rows[0]["rule_cap"] is None and rows[0]["null_score"] != rows[0]["null_score"]  # NaN baseline
    structured = pl.DataFrame([row(feature=1, condition="structured", rule_cap=5, score=0.6)])
    df = pl.concat([result_frame(rows).select(structured.columns), structured], how="vertical_relaxed")
    summary = fig4(df, tmp_path).summary.filter(pl.col("layer") == "L00")
    by_condition = dict(zip(summary["condition"], summary["mean_score"], strict=True))
    assert by_condition == pytest.approx({"unstructured": 0.4, "structured": 0.6})
