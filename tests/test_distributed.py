"""Datasets and torchrun: streamed dataset explanations that resume, and 2-process (gloo, CPU)
runs of evaluate, dataset explain and DDP training that equal the single-process run.

The torchrun runs are real subprocesses (`python -m torch.distributed.run --nproc_per_node 2
-m vitx ...`), the way a user starts them; the single-process expectation is computed in
this process. Tiny models and a few Fashion-MNIST images keep each run to seconds.
"""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vitx
from vitx.attribution.stream import ImageFiles, explain_dataset, read_maps
from vitx.cli.main import main
from vitx.reference_models.checkpoint import load_model_file, save_model
from vitx.datasets import DEBIAN_FASHION
from vitx.reference_models.train import TrainConfig, build, train

needs_fashion = pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
TINY_VIT = dict(dim=24, depth=2, heads=2, patch_size=7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "vitx", *args]
    env = {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**_env(), **env})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _env():
    import os

    return dict(os.environ)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A small random-init Fashion-MNIST ViT saved as a vitx checkpoint (loadable by path)."""
    torch.manual_seed(0)
    model, meta = build(TrainConfig(vit=TINY_VIT))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "qkv" in name and name.endswith("weight"):
                p.mul_(4.0)  # sharper than random-init attention, so maps differ between images
    meta.update(dataset="fashion_mnist", class_names=[str(i) for i in range(10)])
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_model(model, meta, path)
    return str(path) + ".safetensors"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(7):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(sub / f"img{i}.png")
    return folder


def test_folder_explain_writes_shards_and_an_index_equal_to_explain(tiny_checkpoint, image_folder, tmp_path):
    model = load_model_file(tiny_checkpoint)
    result = CliRunner().invoke(main, ["explain", str(image_folder), "--model", tiny_checkpoint, "--batch-size", "3",
                                       "--workers", "2", "--out", str(tmp_path), "--save-maps", "--method", "chefer2021"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["images"] == 7 and meta["shards"] == 3 and meta["method"] == "chefer2021"
    saved = read_maps(tmp_path)
    files = sorted(p for p in image_folder.rglob("*.png"))
    expected = vitx.explain(model, [str(p) for p in files], method="chefer2021", batch_size=3)
    np.testing.assert_allclose(saved["maps"], expected.maps.numpy(), atol=1e-6)
    np.testing.assert_array_equal(saved["targets"], expected.targets.numpy())
    assert (saved["labels"] == -1).all()
    rows = (tmp_path / "index.csv").read_text().splitlines()
    assert rows[0] == "index,source,label,target,prediction,probability,shard,row,source_bytes" and len(rows) == 8
    assert rows[1].split(",")[1] == str(files[0].relative_to(image_folder))


def test_folder_explain_skips_unreadable_images_and_names_them(tiny_checkpoint, image_folder, tmp_path):
    """A broken file costs its own row, not the run: the other images are explained as
    `vitx.explain` explains them, a batch of broken files only gives an empty shard, and the
    command ends non-zero naming the file."""
    import shutil

    folder = tmp_path / "in"
    shutil.copytree(image_folder, folder)
    for name in ("zz_broken1.png", "zz_broken2.png"):  # sorted last: batches [a1 a3 a5 b0] [b2 b4 b6 zz1] [zz2]
        (folder / "b" / name).write_bytes(b"not a png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(folder), "--model", tiny_checkpoint, "--batch-size", "4",
                                       "--workers", "2", "--out", str(out)])
    assert result.exit_code == 1 and "skipped 2 unreadable image(s)" in result.output and "zz_broken1" in result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["images"] == 9 and meta["shards"] == 3
    with np.load(out / "maps" / "shard-00002.npz") as third:
        assert len(third["index"]) == 0  # only a broken file: an empty shard, so a rerun does not retry it
    saved = read_maps(out)
    good = [p for p in sorted(p for p in folder.rglob("*.png")) if "broken" not in p.name]
    expected = vitx.explain(load_model_file(tiny_checkpoint), [str(p) for p in good], method="rollout", batch_size=4)
    assert len(saved["index"]) == 7
    np.testing.assert_allclose(saved["maps"], expected.maps.numpy(), atol=1e-6)


def test_dataset_explain_resumes_after_an_interrupted_run(tiny_checkpoint, image_folder, tmp_path, monkeypatch):
    model = load_model_file(tiny_checkpoint)
    from vitx.registry import find_adapter

    data = ImageFiles(image_folder, find_adapter(model).data_config(model))
    straight = explain_dataset(model, data, tmp_path / "straight", method="rollout", batch_size=2, progress=False)
    assert straight["written"] == 4 and straight["skipped"] == 0

    import vitx.attribution.api as api

    real, calls = api.explain, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third batch is explained
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "explain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(model, data, tmp_path / "resumed", method="rollout", batch_size=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "resumed" / "maps").iterdir()) == ["shard-00000.npz", "shard-00001.npz"]
    assert not (tmp_path / "resumed" / "index.csv").exists()
    before = (tmp_path / "resumed" / "maps" / "shard-00000.npz").stat().st_mtime_ns
    monkeypatch.setattr(api, "explain", real)
    resumed = explain_dataset(model, data, tmp_path / "resumed", method="rollout", batch_size=2, progress=False)
    assert resumed["written"] == 2 and resumed["skipped"] == 2
    assert (tmp_path / "resumed" / "maps" / "shard-00000.npz").stat().st_mtime_ns == before  # not recomputed
    a, b = read_maps(tmp_path / "straight"), read_maps(tmp_path / "resumed")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (tmp_path / "straight" / "index.csv").read_text() == (tmp_path / "resumed" / "index.csv").read_text()

    with pytest.raises(vitx.VitxError, match="another run"):  # other settings never mix into these shards
        explain_dataset(model, data, tmp_path / "resumed", method="grad_rollout", batch_size=2, progress=False)


@needs_fashion
@pytest.mark.slow
def test_torchrun_evaluate_and_dataset_explain_equal_one_process(tiny_checkpoint, data_dir, tmp_path):
    common = ["--model", tiny_checkpoint, "--dataset", "fashion_mnist", "--data-dir", data_dir, "--workers", "0",
              "--device", "cpu", "--batch-size", "4"]
    evaluate = ["evaluate", *common, "--limit", "14", "--methods", "rollout,grad_rollout", "--seed", "3"]
    single = CliRunner().invoke(main, [*evaluate, "--out", str(tmp_path / "ev1")])
    assert single.exit_code == 0, single.output
    # dataset explain: a single process stops after two shards; torchrun finishes the rest
    explain = ["explain", *common, "--limit", "18", "--method", "grad_rollout"]
    full = CliRunner().invoke(main, [*explain, "--out", str(tmp_path / "ex1")])
    assert full.exit_code == 0, full.output
    part = CliRunner().invoke(main, [*explain, "--limit", "18", "--out", str(tmp_path / "ex2")])
    assert part.exit_code == 0
    for shard in (1, 3, 4):
        (tmp_path / "ex2" / "maps" / f"shard-0000{shard}.npz").unlink()
    (tmp_path / "ex2" / "index.csv").unlink()

    torchrun(*evaluate, "--out", str(tmp_path / "ev2"))
    done = torchrun(*explain, "--out", str(tmp_path / "ex2"))
    assert "(2 already there)" in done.stdout

    # same batches, same math: equal up to the last bits a different thread count may change
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("ev1", "ev2"))
    assert one["n"] == two["n"] == 14 and set(one["results"]) == set(two["results"]) == {"rollout", "grad_rollout", "random"}
    for method, result in one["results"].items():
        assert two["results"][method]["auc"] == pytest.approx(result["auc"], abs=1e-6), method
        for test, curve in result["curves"].items():
            assert two["results"][method]["curves"][test] == pytest.approx(curve, abs=1e-6), (method, test)
    a, b = read_maps(tmp_path / "ex1"), read_maps(tmp_path / "ex2")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6, rtol=0, err_msg=key)
    for key in ("index", "targets", "predictions", "labels"):
        np.testing.assert_array_equal(a[key], b[key])


@needs_fashion
@pytest.mark.slow
def test_ddp_training_for_one_epoch_equals_one_process_with_the_same_global_batch(data_dir, tmp_path):
    options = dict(epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0.2, train_limit=64, test_limit=40,
                   augment="none", download=False, data_dir=data_dir, seed=1)
    single = train(TrainConfig(out=str(tmp_path / "one"), vit=TINY_VIT, **options), progress=False)
    torchrun("train", "--out", str(tmp_path / "two"), "--epochs", "1", "--batch-size", "8", "--lr", "3e-3",
             "--warmup-epochs", "0.2", "--train-limit", "64", "--test-limit", "40", "--augment", "none",
             "--no-download", "--data-dir", data_dir, "--seed", "1", "--dim", "24", "--depth", "2", "--heads", "2",
             "--patch-size", "7", "--mlp-ratio", "2.0")
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert history[0]["train_loss"] == pytest.approx(single[0]["train_loss"], abs=1e-5)
    assert history[0]["test_accuracy"] == pytest.approx(single[0]["test_accuracy"], abs=0.03)
    a = load_model_file(tmp_path / "one" / "model.safetensors").state_dict()
    b = load_model_file(tmp_path / "two" / "model.safetensors").state_dict()
    initial = build(TrainConfig(vit=TINY_VIT))[0]  # any init: only to show the weights moved
    moved = max(float((a[k] - v).abs().max()) for k, v in initial.state_dict().items())
    assert moved > 1e-3
    dim = TINY_VIT["dim"]
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("qkv.bias"):
            # softmax ignores a key bias, so its gradient is 0 up to float noise, which Adam's
            # normalisation blows up to a full step: any summation order moves it differently
            keep = torch.ones_like(x, dtype=torch.bool)
            keep[dim:2 * dim] = False
            x, y = x[keep], y[keep]
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4, msg=name)
    # resume under torchrun: a second epoch continues from rank 0's checkpoint
    torchrun("train", "--out", str(tmp_path / "two"), "--epochs", "2", "--batch-size", "8", "--lr", "3e-3",
             "--warmup-epochs", "0.2", "--train-limit", "64", "--test-limit", "40", "--augment", "none",
             "--no-download", "--data-dir", data_dir, "--seed", "1", "--dim", "24", "--depth", "2", "--heads", "2",
             "--patch-size", "7", "--mlp-ratio", "2.0", "--resume")
    assert [e["epoch"] for e in json.loads((tmp_path / "two" / "history.json").read_text())] == [1, 2]


@pytest.mark.parametrize("size,batch", [(20, 6), (16, 4), (9, 2)])
def test_rank_order_splits_each_single_process_batch_between_the_ranks(size, batch):
    from torch.utils.data import DataLoader

    from vitx.distributed import World
    from vitx.reference_models.distributed import RankOrder

    data = list(range(size))
    single = [b.tolist() for b in DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(3005))]
    ranks = [[b.tolist() for b in DataLoader(data, batch_size=batch // 2, drop_last=True,
                                             sampler=RankOrder(size, World(r, 2, r), 3, 5, batch))] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == size // batch
    for whole, first, second in zip(single, *ranks):
        assert first + second == whole
