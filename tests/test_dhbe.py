"""DHBE (auditor/defenses/dhbe.py): data-free, deterministic, the input model untouched; the patch
placement it adds finds where a place-bound trigger sits."""

from __future__ import annotations

import pytest
import torch

from auditor.data import ImageSet
from auditor.defenses.dhbe import DHBEParams, ImageGenerator, PatchGenerator, PatchPlaces
from auditor.registry import DEFENSES

from conftest import BADNETS_PT, BADNETS_TRIGGER, CHEAP_SCAN, run_auditor


def test_runs_without_a_single_clean_sample(load):
    handle = load(BADNETS_PT)
    nothing = ImageSet(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), "none")
    before = [p.detach().clone() for p in handle.module.parameters()]
    out = DEFENSES.get("dhbe").factory(handle, nothing, [], {"iterations": 2, "batch_size": 8}, 0)
    assert out.samples_used == 0 and out.stats["iterations"] == 2
    assert out.stats["synthesized_images"] == 2 * 8 * 2
    assert all(torch.equal(a, b) for a, b in zip(before, handle.module.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, out.handle.module.parameters())), "the student never moved"


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 30, 45)])
def test_generators_fit_any_input_size(shape):
    images = ImageGenerator(16, *shape)(torch.randn(4, 16))
    assert images.shape == (4, *shape)
    side = DHBEParams().patch_side(*shape[1:])
    assert PatchGenerator(16, shape[0], side)(torch.randn(4, 16)).shape == (4, shape[0], side, side)
    assert DHBEParams().patch_side(32, 32) == 5 and DHBEParams().patch_side(224, 224) == 35


def test_patches_go_where_they_are_drawn():
    places = PatchPlaces(8, 8, 3, "cpu")
    x = torch.zeros(2, 1, 8, 8)
    where = torch.tensor([0, places.cols * 5 + 5])  # (0, 0) and (5, 5)
    out = places.paste(x, torch.ones(2, 1, 3, 3), where)
    assert out[0, 0, :3, :3].eq(1).all() and out[0].sum() == 9
    assert out[1, 0, 5:, 5:].eq(1).all() and out[1].sum() == 9


def test_draws_follow_the_places_that_changed_the_student():
    places = PatchPlaces(28, 28, 5, "cpu")
    gen = torch.Generator().manual_seed(0)
    everywhere = torch.arange(len(places.score))
    change = torch.full((len(everywhere),), 0.1)
    corner = (places.rows - 1) * places.cols + places.cols - 1
    change[corner] = 3.0
    places.record(everywhere, change)
    drawn = places.draw(1000, gen)
    assert places.best() == (places.rows - 1, places.cols - 1)
    assert (drawn == corner).float().mean() > 0.3  # half the draws are guided; uniform gives 1/576


@pytest.mark.slow
def test_cli_reports_a_data_free_defense(tmp_path):
    run = run_auditor(tmp_path, BADNETS_PT, "--trigger", str(BADNETS_TRIGGER), *CHEAP_SCAN, "--no-repair",
                      "--defense", "dhbe", "--defense-param", "iterations=2", "--defense-param", "batch_size=16")
    defense = run.data["defense"]
    assert defense["applied"] and defense["name"] == "dhbe" and defense["samples_used"] == 0
    assert defense["stats"]["iterations"] == 2
    html = run.html_path.read_text()
    assert "0 clean samples for the defense" in html and "2 iterations on 64 generated images" in html


def test_a_time_budget_cuts_the_iterations(load):
    """seconds=S: after three iterations the run is sized to what the time allows (here: one more)."""
    handle = load(BADNETS_PT)
    nothing = ImageSet(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), "none")
    out = DEFENSES.get("dhbe").factory(handle, nothing, [], {"iterations": 50, "seconds": 1e-3, "batch_size": 8,
                                                             "student_steps": 1}, 0)
    assert out.stats["iterations"] == 4
