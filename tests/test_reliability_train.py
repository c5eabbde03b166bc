"""`vitx train` reliability (issue 11): no lost runs, resume only what was started, Ctrl-C
stops a shell chain, one `Error:` line for every bad setting.

Tiny runs: 64 Fashion-MNIST training images, a one-block ViT, one or two epochs.
"""
import errno
import fcntl
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import vitx
from vitx.cli import main
from vitx.reference_models import checkpoint as checkpoint_module
from vitx.reference_models import train as train_module
from vitx.reference_models.checkpoint import load_model_file
from vitx.datasets import DEBIAN_FASHION
from vitx.reference_models.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
MICRO_VIT = dict(dim=16, depth=1, heads=2, patch_size=7)


def micro(tmp_path, name="run", **overrides):
    base = dict(out=str(tmp_path / name), epochs=1, batch_size=32, lr=3e-3, warmup_epochs=0.2, train_limit=64,
                test_limit=32, download=False, data_dir=str(tmp_path.parent / "data"), vit=dict(MICRO_VIT))
    return TrainConfig(**{**base, **overrides})


def cli(tmp_path, *args, out="run"):
    common = ["train", "--out", str(tmp_path / out), "--epochs", "1", "--batch-size", "32", "--train-limit", "64",
              "--test-limit", "32", "--dim", "16", "--depth", "1", "--heads", "2", "--patch-size", "7",
              "--no-download", "--data-dir", str(tmp_path.parent / "data")]
    return CliRunner().invoke(main, common + list(args))


def one_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_finished_run_is_never_overwritten_without_force(tmp_path):
    train(micro(tmp_path), progress=False)
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(vitx.VitxError, match="already holds a finished run.*--resume.*--force"):
        train(micro(tmp_path, lr=1e-2), progress=False)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
    one_error(cli(tmp_path), "already holds a finished run")
    history = train(micro(tmp_path, lr=1e-2, seed=1), progress=False, force=True)
    assert len(history) == 1 and (tmp_path / "run" / "model.safetensors").read_bytes() != weights
    assert json.loads((tmp_path / "run" / "model.json").read_text())["train"]["lr"] == 1e-2


def test_two_trainings_on_one_folder_cannot_both_write(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".train.lock", "a") as other:  # a second trainer holding the folder
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(vitx.VitxError, match="another training is writing to"):
            train(micro(tmp_path), progress=False)
        fcntl.flock(other, fcntl.LOCK_UN)
    assert not (out / "model.safetensors").exists()
    assert len(train(micro(tmp_path), progress=False)) == 1  # free again once the other one is done


def test_resume_with_changed_settings_names_each_one(tmp_path):
    train(micro(tmp_path), progress=False)
    with pytest.raises(vitx.VitxError) as caught:
        train(micro(tmp_path, lr=0.5, vit=dict(MICRO_VIT, dim=32)), resume=True, progress=False)
    message = str(caught.value)
    assert "--lr 0.003 -> 0.5" in message and "--dim 16 -> 32" in message and "\n" not in message
    with pytest.raises(vitx.VitxError, match="--mode baseline -> teacher"):
        train(micro(tmp_path, mode="teacher"), resume=True, progress=False)
    assert len(train(micro(tmp_path, device="cpu"), resume=True, progress=False)) == 1  # same settings: fine
    result = cli(tmp_path, "--resume", "--lr", "0.5")
    one_error(result, "cannot resume with changed settings", "--lr 0.003 -> 0.5")


def test_resume_with_more_epochs_follows_the_new_schedule(tmp_path):
    train(micro(tmp_path, warmup_epochs=0.0), progress=False)
    history = train(micro(tmp_path, epochs=3, warmup_epochs=0.0), resume=True, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    lr, low = 3e-3, 3e-5  # cosine from lr to lr/100 over all 3 epochs: after 2 of them, a quarter of the way up
    expected = low + 0.5 * (lr - low) * (1 + math.cos(math.pi * 2 / 3))
    assert history[1]["lr"] == pytest.approx(expected, rel=1e-6)
    assert history[2]["lr"] == pytest.approx(low, rel=1e-6)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["train"]["epochs"] == 3 and meta["history"] == history


def test_ctrl_c_exits_130_without_the_result_line(tmp_path, monkeypatch):
    real = train_module.evaluate
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    result = cli(tmp_path, "--epochs", "2")
    assert result.exit_code == 130, result.output
    assert " epochs -> " not in result.output and "continue with --resume" in result.output
    monkeypatch.setattr(train_module, "evaluate", real)
    (tmp_path / "run" / ".model.safetensors.abc123.tmp").write_bytes(b"half a checkpoint")  # a killed save
    result = cli(tmp_path, "--epochs", "2", "--resume")
    assert result.exit_code == 0 and "after 2 epochs -> " in result.output, result.output
    assert not list((tmp_path / "run").glob("*.tmp")) and not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.parametrize("args,fragments", [
    (["--epochs", "0"], ["--epochs must be a positive integer"]),
    (["--batch-size", "0"], ["--batch-size must be a positive integer"]),
    (["--batch-size", "1000"], ["--batch-size 1000 is larger than the 64 training images"]),
    (["--heads", "3"], ["--heads 3 does not divide --dim 16"]),
    (["--curriculum", "0,28", "--epochs", "2"], ["--curriculum size 0 is out of range"]),
    (["--curriculum", "a,b"], ["--curriculum expects"]),
    (["--lr", "nan"], ["--lr must be a finite number"]),
    (["--device", "meta"], ["cannot train on device"]),
])
def test_bad_settings_are_one_error_line(tmp_path, args, fragments):
    one_error(cli(tmp_path, *args), *fragments)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(tmp_path):
    one_error(cli(tmp_path, "--device", "cuda"), "no CUDA GPU")


def test_files_where_folders_belong(tmp_path):
    (tmp_path / "file").write_text("x")
    one_error(cli(tmp_path, out="file"), "--out", "is a file")
    one_error(cli(tmp_path, "--data-dir", str(tmp_path / "file")), "--data-dir", "is a file")


def test_corrupt_state_is_one_line(tmp_path):
    train(micro(tmp_path), progress=False)
    (tmp_path / "run" / "state.pt").write_bytes(b"\x80\x02garbage")
    one_error(cli(tmp_path, "--resume", "--epochs", "2"), "cannot resume from", "damaged", "--force")


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real = checkpoint_module.save_file
    calls = {"n": 0}

    def full_disk(state, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's weights
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state, path)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    result = cli(tmp_path, "--epochs", "2")
    assert result.exit_code == 1 and "Traceback" not in result.output  # after the first epoch's progress lines:
    errors = [line for line in result.output.splitlines() if "Error:" in line]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "previous checkpoint is intact" in errors[0]
    model = load_model_file(tmp_path / "run" / "model.safetensors")  # epoch 1, whole
    assert [h["epoch"] for h in model.vitx_meta["history"]] == [1]
    assert not list((tmp_path / "run").glob(".*.tmp"))
    monkeypatch.setattr(checkpoint_module, "save_file", real)
    result = cli(tmp_path, "--epochs", "2", "--resume")  # and it resumes from there
    assert result.exit_code == 0 and "after 2 epochs -> " in result.output, result.output


@pytest.mark.parametrize("flag", ["--dim", "--depth", "--batch-size"])
def test_a_model_or_batch_size_past_the_machine_is_one_error_line(tmp_path, flag):
    """`--dim 1000000` once went on to build the model (terabytes of weights) before failing."""
    one_error(cli(tmp_path, flag, str(10 ** 6)), flag, "at most")
