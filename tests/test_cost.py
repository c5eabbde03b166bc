"""Cost in forward-equivalents per image, counted on one image (vitx.evaluate.cost), against
counts worked out by hand from what each method runs; and `vitx evaluate --budget`."""
import math

import pytest
import torch

import vitx
from helpers import one_error, run
from vitx.evaluate.cost import forward_equivalents, method_costs, within_budget


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("fashion_vit")  # 28 x 28 grey, 7 x 7 patches


@pytest.mark.parametrize("method,options,expected", [
    ("rollout", {}, 1),  # one forward, no gradients
    ("chefer2021", {}, 3),  # a forward with gradients and its backward
    ("integrated_gradients", {"steps": 4}, 1 + 4 * 3),  # the recorded forward, then 4 path points with backward
    ("occlusion", {}, 1 + 1 + 49),  # recorded forward, the full image's score, one per occluded patch
    ("shapley", {"permutations": 2, "cells": 2}, 1 + 2 + 2 * 3),  # ends, then 3 inner coalitions per order
    ("rise", {"masks": 10}, 1 + 10),
])
def test_counted_cost_equals_the_hand_count(model, method, options, expected):
    x = torch.rand(1, 1, 28, 28)
    assert forward_equivalents(model, x, method, options) == expected


def test_a_method_over_the_limit_stops_counting_and_leaves_the_model_as_it_was(model):
    from helpers import fingerprint

    before = fingerprint(model)
    costs = method_costs(model, torch.rand(1, 1, 28, 28), ["rollout", "rise"], limit=50)
    assert costs["rollout"] == 1 and math.isinf(costs["rise"])
    assert fingerprint(model) == before
    assert within_budget(costs, 50) == (["rollout"], ["rise"])


def test_evaluate_prints_costs_and_keeps_the_methods_within_the_budget(tmp_path):
    result = run("evaluate", "--dataset", "fashion_mnist", "--n", 2, "--budget", 3, "--methods",
                 "rollout,chefer2021,integrated_gradients", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "rollout 1, chefer2021 3; left out by the budget of 3: integrated_gradients > 3" in result.output
    import json

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["results"]) == {"rollout", "chefer2021", "random"}
    assert saved["forward_equivalents"] == {"rollout": 1.0, "chefer2021": 3.0}
    one_error(run("evaluate", "--dataset", "fashion_mnist", "--n", 2, "--budget", 0.5, "--methods", "rollout",
                  "--out", tmp_path / "none"), "no method fits a budget of 0.5")


def test_vitx_methods_shows_each_counted_cost(monkeypatch):
    from vitx import registry

    # the three methods counted here, and the bundled model they are counted on
    monkeypatch.setenv("VITX_PLUGINS", "rollout,chefer2021,integrated_gradients,reference_models")
    registry.reset()
    result = run("methods", "--cost")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for method, expected in (("rollout", 1), ("chefer2021", 3), ("integrated_gradients", 1 + 32 * 3)):
        at = lines.index(next(line for line in lines if line.startswith(f"{method}  (plugin")))
        assert f"    cost: {expected} forward-equivalents per image (fashion_vit, default options)" in lines[at:at + 20]
