"""Faithfulness metrics: hand-computed AUCs and a model whose evidence is known by construction."""
import pytest
import torch
from torch import nn

from vitx.evaluate.metrics import _masks, auc, patch_order, perturbation_curves, summarise

CONFIG = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "input_size": (3, 32, 32)}


def test_auc_hand_computed():
    assert auc([1, 1, 1], [0, 0.5, 1]) == pytest.approx(1.0)
    assert auc([1, 0], [0, 1]) == pytest.approx(0.5)
    # trapezoids 0.1*(0.9+0.7)/2 + 0.1*(0.7+0.1)/2 = 0.12 over a range of 0.2
    assert auc([0.9, 0.7, 0.1], [0.1, 0.2, 0.3]) == pytest.approx(0.6)


def test_masks_remove_patches_in_relevance_order():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])  # order: 1, 2, 3, 0
    order = patch_order(maps, torch.Generator().manual_seed(0))
    assert order.tolist() == [[1, 2, 3, 0]]
    masks = _masks(order, [0, 1, 2, 4], (2, 2), (4, 4))
    assert masks.shape == (4, 1, 1, 4, 4)
    assert masks[0].sum() == 0 and masks[3].sum() == 16
    assert masks[1, 0, 0, :2, 2:].sum() == 4 and masks[1].sum() == 4     # patch 1 = top right
    assert masks[2, 0, 0, 2:, :2].sum() == 4 and masks[2].sum() == 8     # then patch 2 = bottom left


class RegionModel(nn.Module):
    """Class 1 iff the top-left 8x8 patch is bright: the only evidence is that patch."""

    def forward(self, x):
        evidence = x[:, :, :8, :8].mean(dim=(1, 2, 3)) * 10
        return torch.stack([-evidence, evidence], dim=1)


def test_faithful_map_beats_random_by_a_wide_margin():
    torch.manual_seed(0)
    pixels = torch.rand(16, 3, 32, 32) * 0.2
    pixels[:, :, :8, :8] = 1.0  # every image is class 1 because of patch 0
    labels = torch.ones(16, dtype=torch.long)
    oracle = torch.zeros(16, 4, 4)
    oracle[:, 0, 0] = 1.0
    random_maps = torch.rand(16, 4, 4, generator=torch.Generator().manual_seed(1))
    model = RegionModel()
    faithful = summarise(perturbation_curves(model, pixels, oracle, labels, labels, CONFIG, "black"))
    chance = summarise(perturbation_curves(model, pixels, random_maps, labels, labels, CONFIG, "black"))
    # removing the first 10% (2 of 16 patches) already removes the evidence: accuracy 0 at every p
    assert faithful["positive_accuracy_auc"] == pytest.approx(0.0)
    assert faithful["negative_accuracy_auc"] == pytest.approx(1.0)  # the evidence goes last
    assert chance["positive_accuracy_auc"] > 0.3
    assert faithful["deletion_auc"] < chance["deletion_auc"] - 0.2
    assert faithful["insertion_auc"] > chance["insertion_auc"] + 0.2


def test_curves_are_deterministic():
    torch.manual_seed(0)
    pixels = torch.rand(4, 3, 32, 32)
    labels = torch.ones(4, dtype=torch.long)
    maps = torch.zeros(4, 4, 4)  # all ties: broken by the seeded generator
    first = perturbation_curves(RegionModel(), pixels, maps, labels, labels, CONFIG).mean()
    second = perturbation_curves(RegionModel(), pixels, maps, labels, labels, CONFIG).mean()
    assert first == second


def test_evaluate_methods_on_a_tiny_vit_ranks_random_as_a_baseline():
    from helpers import FAMILIES, images_for
    from vitx.evaluate.metrics import evaluate_methods

    model = FAMILIES["deit"][0]()
    batches = [(images_for((32, 32), batch=4, seed=s), torch.randint(0, 5, (4,))) for s in range(2)]
    results = evaluate_methods(model, batches, ["rollout", "chefer2021"])
    assert set(results) == {"rollout", "chefer2021", "random"}
    for result in results.values():
        assert set(result["auc"]) >= {"positive_accuracy_auc", "deletion_auc", "insertion_auc"}
        assert all(0.0 <= v <= 1.0 for v in result["auc"].values())
    again = evaluate_methods(model, batches, ["rollout", "chefer2021"])
    assert again == results


def test_evaluate_cli_on_an_image_folder_and_on_the_dataset(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from click.testing import CliRunner

    from vitx.cli import main
    from vitx.datasets import DEBIAN_FASHION

    examples = Path(__file__).parent.parent / "examples" / "fashion_mnist"
    for image in examples.glob("*.png"):
        label = image.stem.split("_", 1)[1]
        (tmp_path / "folder" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, tmp_path / "folder" / label / image.name)
    result = CliRunner().invoke(main, ["evaluate", "--images", str(tmp_path / "folder"), "--methods", "rollout",
                                       "--n", "6", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["n"] == 6 and set(saved["results"]) == {"rollout", "random"}
    assert (tmp_path / "eval" / "curves.png").exists()
    bad = CliRunner().invoke(main, ["evaluate", "--methods", "rollout", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "exactly one of --dataset" in bad.output
    if DEBIAN_FASHION.is_dir():
        result = CliRunner().invoke(main, ["evaluate", "--dataset", "fashion_mnist", "--methods", "rollout,chefer2021",
                                           "--n", "20", "--out", str(tmp_path / "ds")])
        assert result.exit_code == 0, result.output
        assert "| chefer2021 |" in result.output and "| random |" in result.output


def test_a_target_score_gives_the_probability_curves_when_it_is_the_probability():
    """Identity: a CallableTarget returning the class probability reproduces the classifier curves."""
    from vitx.attribution.targets import CallableTarget

    torch.manual_seed(0)
    pixels = torch.rand(6, 3, 32, 32)
    labels = torch.ones(6, dtype=torch.long)
    maps = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(2))
    model = RegionModel()
    classic = summarise(perturbation_curves(model, pixels, maps, labels, labels, CONFIG, "mean"))
    target = CallableTarget(lambda logits: logits.softmax(-1)[:, 1])
    scored = summarise(perturbation_curves(model, pixels, maps, labels, labels, CONFIG, "mean", target=target))
    assert set(scored) == {"positive_probability_auc", "negative_probability_auc", "deletion_auc", "insertion_auc"}
    for key, value in scored.items():
        assert value == pytest.approx(classic[key])


def test_similarity_target_starts_at_one_and_falls_when_the_evidence_goes():
    from vitx.attribution.targets import SimilarityTarget

    class Embedder(nn.Module):  # the embedding is the mean colour of each quadrant
        def forward(self, x):
            return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 32, 32)
    pixels[:, :, :16, :16] += 3.0  # the top-left quadrant dominates the embedding
    target = SimilarityTarget(Embedder()(pixels)[0])
    oracle = torch.zeros(1, 4, 4)
    oracle[:, :2, :2] = 1.0
    curves = perturbation_curves(Embedder(), pixels, oracle, None, None, CONFIG, "black", target=target,
                                 tests=("deletion",))
    deletion = curves.mean()["deletion"]
    assert list(curves.mean()) == ["deletion"]
    assert deletion[0] == pytest.approx(1.0)  # nothing removed: the image's own embedding
    assert deletion[4] < 0.6  # the 4 relevant patches (25 %) removed: the embedding turned


def test_road_protocol_keeps_the_kept_pixels_and_fills_removed_ones_smoothly():
    from vitx.evaluate.metrics import removal

    pixels = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32).contiguous()  # a horizontal ramp
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:16, 8:16] = 1
    filled = removal(pixels, "road", {"std": (1.0, 1.0, 1.0)}, torch.Generator().manual_seed(0))(masks)
    assert torch.equal(filled[..., masks[0, 0] == 0], pixels[..., masks[0, 0] == 0])
    # the harmonic fill of a linear ramp is the ramp itself (plus the 0.01 noise)
    assert (filled - pixels).abs().max().item() < 0.06
    assert filled[..., masks[0, 0] == 1].sub(pixels[..., masks[0, 0] == 1]).std().item() == pytest.approx(0.01, rel=0.2)


def test_per_image_references_score_each_image_and_tile_over_stacked_copies():
    from vitx.attribution.targets import SimilarityTarget
    from vitx.errors import VitxError

    references = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = SimilarityTarget(references)
    embeddings = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([1.0, 2 ** -0.5])
    torch.testing.assert_close(target.score(embeddings), expected)
    torch.testing.assert_close(target.score(embeddings.repeat(3, 1)), expected.repeat(3))  # 3 copies of the batch
    with pytest.raises(VitxError):
        target.score(torch.ones(3, 2))
