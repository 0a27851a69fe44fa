from featureinterp_assets.eta import BFLOAT16_SPEEDUP, RunEta, condition_weight, estimate, stage_speedup


def test_eta_counts_the_planned_work_and_adapts_to_the_measured_speed():
    p = RunEta()
    p.plan("records", 10.0)
    p.plan("explain", 90.0)
    assert p.eta() == 100.0
    p.done("records", 10.0, seconds=20.0)  # slower than estimated (damped by a 60 s prior)
    assert abs(p.eta() - 90.0 * 80.0 / 70.0) < 1e-9 and "records" not in p.planned
    p.done("explain", 45.0, seconds=45.0)  # 65 s spent for 55 s estimated
    assert abs(p.eta() - 45.0 * 125.0 / 115.0) < 1e-9
    p.done("explain", 45.0, seconds=1.0)
    assert p.eta() == 0.0 and p.line().endswith("ETA 0:00]")


def test_trees_and_structured_explanations_cost_more():
    assert (
        condition_weight("tree", True)
        > condition_weight("one_shot", True)
        > condition_weight("one_shot", False)
    )
    assert estimate("records", 4) == 4 * estimate("records", 1)


def test_a_bfloat16_model_on_the_cpu_shortens_its_stages_estimates():
    """The embedded default's ``auto`` dtype: on a CPU with native bfloat16 its model-bound
    stages are planned faster (plan and done agree, so the speed factor stays 1 when the
    stages run as measured); float32 presets keep the float32 estimates."""
    from featureinterp.activations.models import native_bf16
    from featureinterp.presets import get_preset

    assert stage_speedup(get_preset("embedded-tiny"), "cpu") == {}  # float32
    fast = stage_speedup(get_preset("embedded"), "cpu")
    assert fast == (BFLOAT16_SPEEDUP if native_bf16("cpu") else {})
    p = RunEta(speedup={"explain": 2.0})
    p.plan("explain", 100.0)
    assert p.eta() == 50.0
    p.done("explain", 50.0, seconds=25.0)  # ran exactly as fast as planned here
    assert p.eta() == 25.0
