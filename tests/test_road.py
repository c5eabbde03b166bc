"""ROAD noisy linear imputation: hand-computed systems and the definition as a fixed point."""
import numpy as np
import pytest
import torch

from vitx.evaluate.road import impute, linear_system, road_images


def test_centre_pixel_is_the_weighted_mean_of_its_eight_neighbours():
    image = torch.arange(9, dtype=torch.float64).view(1, 3, 3)
    removed = torch.zeros(3, 3, dtype=torch.bool)
    removed[1, 1] = True
    # direct neighbours 1, 3, 5, 7 weigh 1/6, diagonals 0, 2, 6, 8 weigh 1/12 (sum 1)
    expected = (1 + 3 + 5 + 7) / 6 + (0 + 2 + 6 + 8) / 12
    assert impute(image, removed)[0, 1, 1].item() == pytest.approx(expected)
    assert torch.equal(impute(image, removed)[~removed[None]], image[~removed[None]])  # kept pixels untouched


def test_corner_pixel_counts_only_neighbours_inside_the_image():
    image = torch.tensor([[[0.0, 6.0], [12.0, 24.0]]])
    removed = torch.tensor([[True, False], [False, False]])
    # neighbours (0,1) and (1,0) weigh 1/6 each, (1,1) 1/12: weighted mean over a weight of 5/12
    expected = (6 / 6 + 12 / 6 + 24 / 12) / (5 / 12)
    assert impute(image, removed)[0, 0, 0].item() == pytest.approx(expected)


def test_two_adjacent_unknowns_solve_a_two_by_two_system():
    # 1x4 strip [a, ?, ?, b]: each unknown has two direct neighbours (weight 1/6 each), so
    # x1 = (a + x2) / 2, x2 = (x1 + b) / 2  ->  x1 = (2a + b) / 3, x2 = (a + 2b) / 3
    image = torch.tensor([[[3.0, 0.0, 0.0, 9.0]]])
    removed = torch.tensor([[False, True, True, False]])
    filled = impute(image, removed)[0, 0]
    assert filled[1].item() == pytest.approx(5.0) and filled[2].item() == pytest.approx(7.0)


def test_the_solution_is_the_fixed_point_of_the_neighbour_mean_and_the_matrix_is_symmetric():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((2, 9, 11)))
    removed = torch.from_numpy(rng.random((9, 11)) < 0.5)
    matrix, _ = linear_system(removed.numpy(), image.numpy())
    assert abs(matrix - matrix.T).max() < 1e-15
    filled = impute(image, removed).numpy()
    # the definition, iterated (Jacobi): every removed pixel <- weighted mean of its neighbours
    kernel = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    values = np.where(removed.numpy(), 0.0, image.numpy())
    ones = np.pad(np.ones((9, 11)), 1)
    weight = sum(kernel[i, j] * ones[i:i + 9, j:j + 11] for i in range(3) for j in range(3))
    for _ in range(3000):
        padded = np.pad(values, ((0, 0), (1, 1), (1, 1)))
        mean = sum(kernel[i, j] * padded[:, i:i + 9, j:j + 11] for i in range(3) for j in range(3)) / weight
        values = np.where(removed.numpy(), mean, image.numpy())
    np.testing.assert_allclose(filled, values, atol=1e-9)


def test_noise_is_added_only_to_removed_pixels_with_the_asked_std_and_is_seeded():
    image = torch.zeros(3, 40, 40)
    masks = torch.zeros(1, 1, 40, 40)
    masks[..., :20] = 1
    config = {"std": (0.5, 0.5, 0.5)}
    out = road_images(image[None], masks, config, noise=0.1, generator=torch.Generator().manual_seed(3))[0]
    assert torch.all(out[:, :, 20:] == 0)
    assert out[:, :, :20].std().item() == pytest.approx(0.1 / 0.5, rel=0.05)  # 0.1 pixel units / std 0.5
    again = road_images(image[None], masks, config, noise=0.1, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(out, again)


def test_fill_commutes_with_the_channel_normalisation():
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.random((3, 8, 8)))
    removed = torch.from_numpy(rng.random((8, 8)) < 0.4)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(3, 1, 1)
    torch.testing.assert_close(impute((image - mean) / std, removed), (impute(image, removed) - mean) / std)


def test_evaluate_cli_with_road_and_bootstrap_intervals(tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from vitx.cli.main import main

    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / "images" / str(i)).mkdir(parents=True)
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(tmp_path / "images" / str(i) / "a.png")
    result = CliRunner().invoke(main, ["evaluate", "--images", str(tmp_path / "images"), "-m", "fashion_vit", "--n", "3",
                                       "--methods", "rollout", "--protocol", "road", "--bootstrap", "50", "--workers", "0",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["baseline"] == "road" and saved["bootstrap"] == 50
    for name in ("rollout", "random"):
        for key, (low, high) in saved["results"][name]["interval"].items():
            assert low <= saved["results"][name]["auc"][key] <= high
    assert "[" in (tmp_path / "out" / "results.md").read_text()
    bad = CliRunner().invoke(main, ["evaluate", "--images", str(tmp_path / "images"), "-m", "fashion_vit",
                                    "--bootstrap", "-1", "--out", str(tmp_path / "out")])
    assert bad.exit_code != 0 and "Error:" in bad.output and "Traceback" not in bad.output
