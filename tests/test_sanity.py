"""Cascading model-parameter randomisation (Adebayo et al. 2018) on hand-made cases."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import fingerprint, images_for, tiny_timm
from scipy.stats import spearmanr

import vitx
from vitx.attribution.explainer import Explainer
from vitx.cli import main
from vitx.evaluate.sanity import cascade_groups, randomise_, sanity_check, spearman, ssim


class CentrePrior(Explainer):
    """Ignores the model: relevance falls off with the token index (a fixed 'centre prior')."""

    name = "centre_prior_test"

    def attribute(self, attentions, query, gradients=None):
        batch, tokens = attentions[0].shape[0], attentions[0].shape[-1]
        return torch.linspace(1.0, 0.1, tokens).expand(batch, tokens).clone()


class Plugin:
    @vitx.hookimpl
    def vitx_register_explainers(self, register):
        register(CentrePrior)


@pytest.fixture(autouse=True)
def centre_prior():
    vitx.register_plugin(Plugin(), name="sanity-test")


def test_spearman_matches_scipy_and_handles_constant_maps():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 16)), rng.random((5, 16))
    b[1] = a[1] ** 3  # monotone: rank correlation exactly 1
    b[2] = np.round(b[2], 1)  # ties
    expected = [spearmanr(x, y).statistic for x, y in zip(a, b)]
    assert np.allclose(spearman(a, b), expected) and np.isclose(spearman(a, b)[1], 1.0)
    constant = np.ones((1, 16))
    assert spearman(constant, constant)[0] == 1.0 and spearman(constant, a[:1])[0] == 0.0


def test_ssim_is_one_for_identical_maps_and_lower_for_different_ones():
    rng = np.random.default_rng(0)
    a = rng.random((2, 32, 32))
    assert np.allclose(ssim(a, a), 1.0)
    assert (ssim(a, rng.random((2, 32, 32))) < 0.2).all()


def test_cascade_goes_from_the_head_down_to_the_embeddings():
    model = tiny_timm("vit_tiny_patch16_224")
    groups = cascade_groups(model)
    assert [name for name, _ in groups] == ["head", "block 2", "block 1", "block 0", "embedding"]
    head, embedding = set(groups[0][1]), set(groups[-1][1])
    assert {"norm.weight", "norm.bias", "head.weight", "head.bias"} == head
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"} == embedding
    assert all(name.startswith("blocks.2.") for name in groups[1][1]) and len(groups[1][1]) == 12
    covered = sorted(n for _, names in groups for n in names)
    assert covered == sorted(n for n, _ in model.named_parameters())  # every parameter, once


def test_randomise_keeps_each_tensors_scale_but_not_its_values():
    model = tiny_timm("vit_tiny_patch16_224")
    weight = model.blocks[0].attn.qkv.weight
    before = weight.detach().clone()
    randomise_(model, ["blocks.0.attn.qkv.weight"], torch.Generator().manual_seed(0))
    assert not torch.allclose(weight, before)
    weight = weight.detach()
    assert abs(float(weight.std()) / float(before.std()) - 1) < 0.05
    assert abs(float(torch.corrcoef(torch.stack([weight.flatten(), before.flatten()]))[0, 1])) < 0.1


def test_a_method_that_ignores_the_model_fails_and_rollout_passes():
    model = tiny_timm("vit_tiny_patch16_224")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    marks = fingerprint(model)
    result = sanity_check(model, images_for((32, 32), batch=4), ["centre_prior_test", "rollout", "grad_rollout"])
    assert result.steps == ["trained", "head", "block 2", "block 1", "block 0", "embedding"]
    assert np.allclose(result.spearman["centre_prior_test"], 1.0) and np.allclose(result.ssim["centre_prior_test"], 1.0)
    assert not result.passed("centre_prior_test")
    assert result.passed("rollout") and result.passed("grad_rollout")
    assert result.spearman["rollout"][1] == pytest.approx(1.0)  # rollout does not read the head: unchanged
    assert result.spearman["grad_rollout"][1] < 0.99  # the gradient does
    assert fingerprint(model) == marks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the model is untouched
    assert [row[-1] for row in result.rows()] == ["FAIL", "pass", "pass"]


def test_evaluate_cli_sanity_writes_its_files(tmp_path):
    examples = Path(__file__).parent.parent / "examples" / "fashion_mnist"
    for image in sorted(examples.glob("*.png"))[:4]:
        (tmp_path / "folder" / "0").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, tmp_path / "folder" / "0" / image.name)
    result = CliRunner().invoke(main, ["evaluate", "--images", str(tmp_path / "folder"), "--methods",
                                       "rollout,centre_prior_test", "--n", "4", "--sanity", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "e" / "sanity.json").read_text())
    assert saved["count"] == 4 and saved["passed"] == {"rollout": True, "centre_prior_test": False}
    assert (tmp_path / "e" / "sanity.png").exists() and "| centre_prior_test |" in result.output


def test_inspect_report_shows_the_sanity_check(tmp_path):
    from vitx.inspect.inspection import inspect_models

    page = inspect_models({"vit": tiny_timm("vit_tiny_patch16_224")}, images_for((32, 32), batch=2), tmp_path,
                          methods=["rollout", "centre_prior_test"], sanity=True).read_text()
    assert "<h2>Sanity check</h2>" in page and "vit-sanity.png" in page
    assert re.search(r"<td>centre_prior_test</td>(<td>[^<]*</td>){4}<td>FAIL</td>", page)
    assert re.search(r"<td>rollout</td>(<td>[^<]*</td>){4}<td>pass</td>", page)
