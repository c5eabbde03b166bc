"""Localisation metrics (Chefer et al. 2021 protocol, pointing game) on synthetic masks."""
import numpy as np
import pytest
import torch
from helpers import tiny_timm
from PIL import Image
from sklearn.metrics import average_precision_score

from vitx import VitxError
from vitx.evaluate.localisation import (LocalisationMeter, average_precision, evaluate_localisation, normalised_maps,
                                        pointing_hit)
from vitx.evaluate.masks import gtsegs_ijcv, mask_folder


def square_mask(size=32, top=8, left=8, side=16):
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.random(200) < 0.3
        scores = np.round(rng.random(200), 1)  # many ties
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_a_map_that_is_the_mask_scores_one_and_its_inverse_zero():
    mask = square_mask()
    exact = torch.as_tensor(mask, dtype=torch.float32)[None]  # at mask resolution: upsampling is the identity
    good = LocalisationMeter(tolerance=0).add(exact, [mask]).result()
    assert good == {**good, "pixel_accuracy": pytest.approx(1), "mIoU": pytest.approx(1), "mAP": pytest.approx(1),
                    "pointing_game": 1.0}
    bad = LocalisationMeter(tolerance=0).add(1 - exact, [mask]).result()
    assert bad["pixel_accuracy"] == pytest.approx(0) and bad["mIoU"] == pytest.approx(0)
    # the two-channel AP has a floor: half of its labels are positive, so all-wrong scores give 0.5
    assert bad["pointing_game"] == 0.0 and bad["mAP"] == pytest.approx(0.5)
    patch_map = torch.zeros(1, 4, 4)
    patch_map[0, 1:3, 1:3] = 1.0  # 8 px patches covering the square: bilinear blur widens it a little
    blurred = LocalisationMeter(tolerance=0).add(patch_map, [mask]).result()
    assert blurred["pixel_accuracy"] > 0.85 and blurred["mIoU"] > 0.75 and blurred["pointing_game"] == 1.0


def test_hand_computed_confusion_and_dataset_level_iou():
    # A map that is already at mask resolution (4x4 -> 4x4 is the identity for bilinear)
    mask = np.array([[1, 1, 0, 0]] * 4, bool)
    patch_map = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 4)[None]  # mean 0.25: predicts column 0 only
    meter = LocalisationMeter(tolerance=0).add(patch_map, [mask])
    result = meter.result()
    # predicted fg: 4 px (all correct); missed fg: 4 px; bg: 8 px, all correct
    assert result["pixel_accuracy"] == pytest.approx(12 / 16)
    assert result["iou_foreground"] == pytest.approx(4 / 8) and result["iou_background"] == pytest.approx(8 / 12)
    assert result["mIoU"] == pytest.approx((4 / 8 + 8 / 12) / 2)
    labels = np.stack([~mask, mask]).ravel()
    scores = np.stack([1 - patch_map[0].numpy(), patch_map[0].numpy()]).ravel()
    assert result["mAP"] == pytest.approx(average_precision_score(labels, scores))
    # IoU sums over the data set before dividing: a second image predicting column 3 only
    # adds intersection 0 and union 4 + 8 to the foreground
    meter.add(torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 4)[None], [mask])
    assert meter.result()["iou_foreground"] == pytest.approx((4 + 0) / (8 + 12))
    assert meter.result()["count"] == 2


def test_pointing_game_tolerance_and_empty_masks():
    mask = square_mask()
    score = np.zeros((32, 32))
    score[4, 16] = 1.0  # 4 px above the square
    assert not pointing_hit(score, mask, tolerance=3) and pointing_hit(score, mask, tolerance=4)
    meter = LocalisationMeter().add(torch.rand(1, 4, 4), [np.zeros((32, 32), bool)])
    assert np.isnan(meter.result()["pointing_game"])  # no object: skipped


def test_normalised_maps_span_zero_to_one():
    up = normalised_maps(torch.rand(2, 4, 4) * 5 + 3, (32, 32))
    assert up.shape == (2, 32, 32) and torch.allclose(up.flatten(1).amin(1), torch.zeros(2, dtype=up.dtype))
    assert torch.allclose(up.flatten(1).amax(1), torch.ones(2, dtype=up.dtype))


def write_pairs(folder, count=3):
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "images" / f"im{i}.jpg")
        Image.fromarray(np.uint8(square_mask(40, 4 * i, 4, 20)) * 255).save(folder / "masks" / f"im{i}.png")


def test_mask_folder_and_evaluation_end_to_end(tmp_path):
    write_pairs(tmp_path)
    pairs = mask_folder(tmp_path)
    assert [p.name for p, _ in pairs] == ["im0.jpg", "im1.jpg", "im2.jpg"] and pairs[1][1][4:24, 4:24].all()
    model = tiny_timm("vit_tiny_patch16_224")  # data config: 32 px, so masks are resized like the images
    results = evaluate_localisation(model, pairs, ["rollout"], batch_size=2)
    assert set(results) == {"rollout", "random"} and results["rollout"]["count"] == 3
    for values in results.values():
        assert 0 <= values["pixel_accuracy"] <= 1 and 0 <= values["mIoU"] <= 1 and 0 <= values["mAP"] <= 1
    (tmp_path / "images" / "extra.png").write_bytes((tmp_path / "masks" / "im0.png").read_bytes())
    with pytest.raises(VitxError, match="no mask for extra.png"):
        mask_folder(tmp_path)


def test_gtsegs_ijcv_reader_on_a_file_in_its_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 20, 3), dtype=np.uint8), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)]
    masks = [square_mask(30)[:, :20], square_mask(24, 2, 2, 10)]
    path = tmp_path / "gtsegs_ijcv.mat"
    with h5py.File(path, "w") as f:  # MATLAB v7.3 stores arrays transposed, cells as object references
        refs = h5py.special_dtype(ref=h5py.Reference)
        img, gt = f.create_dataset("value/img", (2, 1), dtype=refs), f.create_dataset("value/gt", (2, 1), dtype=refs)
        for i, (image, mask) in enumerate(zip(images, masks)):
            img[i, 0] = f.create_dataset(f"#refs#/img{i}", data=image.transpose(2, 1, 0)).ref
            inner = f.create_dataset(f"#refs#/gtmask{i}", data=mask.T.astype(np.uint8)).ref
            cell = f.create_dataset(f"#refs#/gtcell{i}", (1, 1), dtype=refs)
            cell[0, 0] = inner
            gt[i, 0] = cell.ref
    read = list(gtsegs_ijcv(path))
    assert len(read) == 2 and len(list(gtsegs_ijcv(path, limit=1))) == 1
    for (image, mask), original, original_mask in zip(read, images, masks):
        assert np.array_equal(np.asarray(image), original) and np.array_equal(mask, original_mask)
    with pytest.raises(VitxError, match="not found"):
        next(gtsegs_ijcv(tmp_path / "missing.mat"))


def test_evaluate_cli_with_masks(tmp_path):
    import json

    from click.testing import CliRunner

    from vitx.cli import main

    write_pairs(tmp_path / "set")
    result = CliRunner().invoke(main, ["evaluate", "--masks", str(tmp_path / "set"), "--methods", "rollout", "--n", "2",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "localisation.json").read_text())
    assert saved["results"]["rollout"]["count"] == 2 and "| random |" in result.output
    missing = CliRunner().invoke(main, ["evaluate", "--masks", str(tmp_path / "nope"), "--methods", "rollout"])
    assert missing.exit_code == 1 and "masks not found" in missing.output
