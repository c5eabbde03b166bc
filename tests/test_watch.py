"""`vitx train --log tensorboard`: curves and attention maps per epoch, read back with
TensorBoard's own event reader, and a stopped, resumed run that logs exactly what an
uninterrupted one trains (each epoch logged once)."""
import pytest
import torch
from mnist_files import write_mnist

from vitx.reference_models import train as train_module
from vitx.reference_models.checkpoint import load_model_file
from vitx.reference_models.train import TrainConfig, train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="pip install 'vitx[tensorboard]'")
TINY = dict(dim=16, depth=2, heads=2, patch_size=7)


def config(tmp_path, name, **overrides):
    root = write_mnist(tmp_path / "data", train_count=256, test_count=64)
    return TrainConfig(**{**dict(dataset="mnist", mode="baseline", out=str(tmp_path / name), epochs=3, batch_size=64,
                                 lr=3e-3, warmup_epochs=0.2, augment="affine", data_dir=str(root), download=False,
                                 vit=TINY, teacher_width=4), **overrides})


def events(run):
    reader = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    reader.Reload()
    return reader


def test_each_epoch_logs_curves_and_attention_maps(tmp_path):
    teacher = config(tmp_path, "teacher", mode="teacher", epochs=1)
    train(teacher, progress=False)
    run = config(tmp_path, "deit", mode="deit", teacher=str(tmp_path / "teacher" / "model.safetensors"),
                 log="tensorboard")
    history = train(run, progress=False)
    logged = events(tmp_path / "deit")
    assert [(e.step, e.value) for e in logged.Scalars("accuracy/test")] == \
        [(h["epoch"], pytest.approx(h["test_accuracy"])) for h in history]
    assert [e.value for e in logged.Scalars("loss/train")] == pytest.approx([h["train_loss"] for h in history])
    for token in ("cls", "dist"):  # the DeiT's two tokens: four test images each, every epoch
        images = logged.Images(f"attention/rollout_{token}")
        assert [e.step for e in images] == [1, 2, 3] and images[0].width == 4 * 4 * 28
    assert not (tmp_path / "teacher" / "tensorboard").exists()  # --log none writes nothing


def test_a_stopped_and_resumed_run_logs_each_epoch_once_and_trains_the_same(tmp_path, monkeypatch):
    straight = train(config(tmp_path, "straight"), progress=False)  # no log
    real_save = train_module._save
    calls = {"n": 0}

    def save_then_stop(*args, **kwargs):  # stopped after epoch 2 was logged, before it was saved
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_save(*args, **kwargs)

    logged = config(tmp_path, "logged", log="tensorboard")
    monkeypatch.setattr(train_module, "_save", save_then_stop)
    assert len(train(logged, progress=False)) == 2  # epoch 2 ran (and was logged) but is not saved
    monkeypatch.setattr(train_module, "_save", real_save)
    resumed = train(logged, resume=True, progress=False)
    assert [h["test_accuracy"] for h in resumed] == [h["test_accuracy"] for h in straight]
    a, b = load_model_file(tmp_path / "straight"), load_model_file(tmp_path / "logged")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)
    steps = [e.step for e in events(tmp_path / "logged").Scalars("accuracy/test")]
    assert steps == [1, 2, 3]  # the unsaved epoch 2's first events purged
