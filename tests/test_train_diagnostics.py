"""Run warnings: each check fires on a run that misses, and stays quiet on one that does not."""

import pytest

from sae_hooks.train.diagnostics import fvu_drop, run_warnings, target_l0

CONFIG = {"target_l0": 4.0, "steps": 100}


def _log(l0=4.0, dead=0.0, dense=0.0, fvus=(0.5, 0.3, 0.2, 0.2)):
    steps = [25, 50, 90, 100]
    records = [
        {"step": s, "fvu": f, "l0": l0, "dead_fraction": dead, "dense_fraction": dense}
        for s, f in zip(steps, fvus)
    ]
    return [*records, {"step": 100, "val/l0": l0, "val/dead_fraction": dead}]


def test_a_run_on_target_has_no_warning():
    assert run_warnings(_log(), CONFIG) == []


@pytest.mark.parametrize(
    ("records", "needle"),
    [
        (_log(l0=5.2), "final L0 5.20 is 30% off the target 4"),
        (_log(l0=2.9), "off the target"),
        (_log(dead=0.2), "20% of the latents are dead"),
        (_log(dense=0.15), "15% of the latents are dense"),
        (_log(fvus=(0.5, 0.3, 0.2, 0.18)), "undertrained: training FVU still fell 10.0%"),
    ],
)
def test_each_miss_is_named(records, needle):
    found = run_warnings(records, CONFIG)
    assert len(found) == 1 and needle in found[0]


def test_targets_and_edges():
    assert target_l0({"k_per_token": 32, "target_l0": None}) == 32
    assert target_l0({"target_l0": None}) is None
    assert run_warnings(_log(l0=50), {"steps": 100}) == []  # no target, no L0 check
    assert fvu_drop([{"step": 100, "fvu": 0.1}], 100) is None  # one record: unknown
    assert fvu_drop(_log(fvus=(0.5, 0.3, 0.2, 0.1)), 100) == pytest.approx(0.5)


def test_dead_latents_are_judged_over_the_training_window_not_the_validation_rows():
    rare_but_alive = [*_log()[:-1], {"step": 100, "val/l0": 4.0, "val/dead_fraction": 0.3}]
    assert run_warnings(rare_but_alive, CONFIG) == []
    no_training_figure = [{"step": 100, "val/l0": 4.0, "val/dead_fraction": 0.3}]
    assert "30% of the latents are dead" in run_warnings(no_training_figure, CONFIG)[0]
