"""--budget: scans run a fixed fraction of their optimisation steps, chosen by pricing them on this machine."""

from auditor.budget import FRACTIONS, plan_stage, scaled_params, step_keys

DEFAULTS = {"max_steps": 600, "steps": 300, "all_to_all_steps": 0, "warp_steps": 80, "starts": 8, "early_stop_patience": 40, "lr": 0.1}


def test_only_step_counts_that_are_on_and_not_set_by_the_user_are_scaled():
    # all_to_all_steps 0 is switched off, the warp search is kept whole, patience is not a step count
    assert step_keys(DEFAULTS) == ["max_steps", "steps"]
    params, reduced = scaled_params(DEFAULTS, {"steps": 50, "lr": 0.2}, 0.125)
    assert params == {"steps": 50, "lr": 0.2, "max_steps": 75} and reduced == {"max_steps": [600, 75]}
    assert scaled_params({"steps": 3}, {}, 0.125) == ({"steps": 1}, {"steps": [3, 1]})  # never below one step
    assert scaled_params(DEFAULTS, {"lr": 0.2}, 1.0) == ({"lr": 0.2}, {})


def test_the_largest_fraction_whose_price_fits_is_chosen():
    def price(params):  # seconds: one per 100 steps of either kind
        return (params.get("max_steps", 600) + params.get("steps", 300)) / 100

    full, _ = plan_stage("before", 100, price, DEFAULTS, {})
    assert full.fraction == 1 and full.reduced == {} and full.fits and full.planned_seconds == 9
    half, params = plan_stage("before", 5, price, DEFAULTS, {})
    assert half.fraction == 0.5 and params == {"max_steps": 300, "steps": 150} and half.planned_seconds == 4.5
    short, _ = plan_stage("after", 0.5, price, DEFAULTS, {})
    assert short.fraction == FRACTIONS[-1] and not short.fits and "too small" in short.message("generative")
    assert short.summary()["reduced"] == {"max_steps": [600, 150], "steps": [300, 75]}


def test_the_audit_runs_its_scan_at_the_fraction_that_fits_and_says_so(tmp_path, monkeypatch):
    """End to end: a budget far under the scan's price runs it at the smallest fraction (the user's own
    starts=1 kept), the JSON and the report say what was reduced; a generous one reduces nothing."""
    from test_cli import invoke

    from conftest import BADNETS_PT

    tight = invoke(tmp_path, monkeypatch, BADNETS_PT, "--scan", "max-margin", "--scan-param", "starts=1", "--defense", "none",
                   "--budget", "0.01", quiet=False)
    plan = tight.data["scan"]["budget"]
    assert plan["fraction"] == FRACTIONS[-1] and not plan["fits"] and plan["stage"] == "before"
    assert plan["reduced"] == {"steps": [300, 75], "nc_max_steps": [600, 150]}
    assert tight.data["config"]["budget_seconds"] == 0.01
    assert "budget: max-margin scan at 1/4 of its optimisation steps" in tight.stderr
    html = (tmp_path / "r.html").read_text()
    assert "--budget 0.01s: the delivered model&#x27;s scan ran at 1/4 of its optimisation steps" in html
    (tmp_path / "g").mkdir()
    generous = invoke(tmp_path / "g", monkeypatch, BADNETS_PT, "--scan", "max-margin", "--scan-param", "starts=1",
                      "--scan-param", "steps=2", "--defense", "none", "--budget", "100000")
    assert generous.data["scan"]["budget"]["fraction"] == 1 and generous.data["scan"]["budget"]["reduced"] == {}
    assert "--budget" not in (tmp_path / "g" / "r.html").read_text().split('<ul class="reasons">')[1].split("</ul>")[0]
    zero = invoke(tmp_path, monkeypatch, BADNETS_PT, "--budget", "0")
    assert zero.exit_code == 2 and "--budget" in zero.output
