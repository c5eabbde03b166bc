"""One trainer for the teacher and the three students.

Modes: `teacher` (the CNN), `baseline` (ViT, cross-entropy with label smoothing), `kd`
(classic distillation into the cls head: soft KL at temperature T, or hard teacher
labels), `deit` (ViT with a distillation token trained on the teacher's hard labels),
`finetune` (a pretrained timm or Hugging Face ViT, new head, layer-wise lr decay: finetune.py).
Resumable at epoch boundaries with every state that affects the result (model,
optimizer, scheduler, EMA, epoch, history, RNG), so a resumed run reproduces the
uninterrupted one.
"""
import csv
import json
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm import tqdm

from vitx.errors import VitxError
from vitx.models import resolve_device

from .augment import augment_batch
from .checkpoint import load_model_file, load_state, save_model, save_state
from .config import AUGMENTS, MODES, TrainConfig  # noqa: F401 (AUGMENTS, MODES: re-exported for the train CLI)
from . import distributed as ddp
from vitx.datasets import dataset_info, load_split
from .runs import check_more_epochs, check_resume, run_folder, space_error, validate_config
from .teacher import TeacherCNN
from .watch import NoLog, open_log
from .vit import ViT, ViTConfig


def curriculum_size(config: TrainConfig, epoch: int, full: int) -> int:
    """Low-to-high resolution: the sizes split the epochs into equal stages."""
    if not config.curriculum:
        return full
    stage = min(len(config.curriculum) - 1, epoch * len(config.curriculum) // config.epochs)
    return config.curriculum[stage]


def build(config: TrainConfig):
    if config.mode == "finetune":  # a pretrained timm / Hugging Face network: finetune.py
        from .finetune import build_finetune

        return build_finetune(config)
    info = dataset_info(config.dataset)
    if config.mode == "teacher":
        arch = dict(in_chans=info.channels, num_classes=len(info.classes), width=config.teacher_width)
        return TeacherCNN(**arch), {"kind": "teacher", "config": arch}
    vit = ViTConfig(img_size=info.size, in_chans=info.channels, num_classes=len(info.classes),
                    mean=list(info.mean), std=list(info.std), class_names=list(info.classes),
                    distill_token=config.mode == "deit", **config.vit)
    return ViT(vit), {"kind": "vit", "config": vit.to_dict()}


def loss_fn(config: TrainConfig, model, teacher, x, y):
    """y: class indices, or class probabilities when Mixup/CutMix mixed the batch."""
    output = model(x)
    if config.mode in ("teacher", "baseline", "finetune"):
        return F.cross_entropy(output, y, label_smoothing=config.label_smoothing)
    with torch.no_grad():
        teacher_logits = teacher(x)
    if config.mode == "deit":  # DeiT: the cls token learns the labels, the dist token the teacher
        cls_logits, dist_logits = output
        true_loss = F.cross_entropy(cls_logits, y, label_smoothing=config.label_smoothing)
        if config.deit_soft:
            return 0.5 * true_loss + 0.5 * soft_distillation(dist_logits, teacher_logits, config.kd_temperature)
        return 0.5 * true_loss + 0.5 * F.cross_entropy(dist_logits, teacher_logits.argmax(-1))
    true_loss = F.cross_entropy(output, y, label_smoothing=config.label_smoothing)
    if config.kd_hard:
        return 0.5 * true_loss + 0.5 * F.cross_entropy(output, teacher_logits.argmax(-1))
    return (1 - config.kd_alpha) * true_loss + config.kd_alpha * soft_distillation(output, teacher_logits,
                                                                                   config.kd_temperature)


def soft_distillation(student_logits, teacher_logits, t: float):
    """KL from the teacher's to the student's softmax at temperature t, times t^2 (Hinton et
    al.: keeps the gradient's scale independent of t)."""
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t


@torch.no_grad()
def evaluate(model, loader, device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x.to(device)).argmax(-1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


def in_memory(dataset):
    """A deterministic split decoded once into tensors: the per-image PIL decode and
    transform otherwise costs ~13 s per Fashion-MNIST epoch on 2 cores, 20-25 % of an epoch."""
    images, labels = zip(*DataLoader(dataset, batch_size=1000))
    return TensorDataset(torch.cat(images), torch.cat(labels))


def _subset(dataset, limit, seed):
    if not limit or limit >= len(dataset):
        return dataset
    return Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def write_history(out: Path, history: List[dict]) -> None:
    from .curves import draw_curves

    (out / "history.json").write_text(json.dumps(history, indent=1))
    with open(out / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    draw_curves(history, out / "curves.png")


def train(config: TrainConfig, resume: bool = False, progress: bool = True, force: bool = False) -> List[dict]:
    """Train (or with `resume`, continue) the run in `config.out`. A folder that already holds
    a run is refused unless `resume` or `force` (which starts over); one trainer per folder.
    Ctrl-C saves at the last finished epoch and returns the history so far."""
    if config.mode not in MODES:
        raise VitxError(f"unknown mode {config.mode!r}; use one of {', '.join(MODES)}")
    if config.mode in ("kd", "deit") and not config.teacher:
        raise VitxError(f"mode {config.mode} needs --teacher CHECKPOINT (train one with --mode teacher)")
    if config.augment not in AUGMENTS:
        raise VitxError(f"unknown augmentation {config.augment!r}; use one of {', '.join(AUGMENTS)}")
    info = dataset_info(config.dataset)
    validate_config(config, info.size)
    # under torchrun: DDP, one rank per GPU / CPU process
    world, device = ddp.setup(str(resolve_device(config.device, action="train")))
    with _rank_folder(config.out, resume, force, world) as out:
        return _train(config, resume, progress, device, out, info, world)


@contextmanager
def _rank_folder(out, resume: bool, force: bool, world):
    """Rank 0 holds the run folder (lock, overwrite and resume guards, see runs.py) and alone
    writes to it; under torchrun the other ranks wait until it does, then only read from it
    (a resumed state). A rank that fails makes torchrun stop the others."""
    if world.is_main:
        with run_folder(out, resume, force) as folder:
            ddp.barrier(world)
            yield folder
    else:
        ddp.barrier(world)
        yield Path(out)


def _resume_state(path: Path, config: TrainConfig) -> dict:
    """The saved state, after checking it belongs to the same settings."""
    try:
        state = load_state(path)
    except Exception as exc:  # truncated, not a torch file, pickled objects
        raise VitxError(f"cannot resume from {path}: the file is damaged ({type(exc).__name__}); "
                        "start over with --force") from None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise VitxError(f"cannot resume from {path}: not a vitx training state; start over with --force")
    saved = state.get("config")
    if saved is None:  # states written before the config was saved with them
        try:
            saved = json.loads((path.parent / "model.json").read_text()).get("train", {})
        except (OSError, ValueError):
            saved = {}
    check_resume(config, saved)
    check_more_epochs(config, state["epoch"])
    return state


@dataclass
class Session:
    """Everything one training run updates, built once (`_session`) and saved whole at each
    epoch (`_save`), so that a resumed run continues exactly where the last epoch ended."""

    model: torch.nn.Module  # what is saved and evaluated
    net: torch.nn.Module  # what the forward runs through (DDP around `model`, or `model`)
    meta: dict
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    ema: Optional[ModelEmaV3]
    mixer: Optional[object]  # MixUp / CutMix on the batch
    teacher: Optional[torch.nn.Module]
    steps: int  # optimiser steps per epoch
    amp: bool
    start_epoch: int = 0
    history: List[dict] = field(default_factory=list)

    @property
    def evaluated(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


def _splits(config: TrainConfig):
    """(train set, test set) of the config's dataset, subsampled; decoded in memory when the
    augmentation runs on the batch (the split is then decoded once, not every epoch)."""
    in_memory_split = config.augment != "default"
    train_set = _subset(load_split(config.dataset, True, config.data_dir, config.download, augment=not in_memory_split),
                        config.train_limit, config.seed)
    if in_memory_split:
        train_set = in_memory(train_set)
    test_set = in_memory(_subset(load_split(config.dataset, False, config.data_dir, config.download),
                                 config.test_limit, config.seed))
    return train_set, test_set


def _session(config: TrainConfig, device, info, world, train_size: int) -> Session:
    """Model, optimiser, cosine schedule, AMP scaler, EMA, MixUp/CutMix and teacher of a run."""
    model, meta = build(config)
    amp = device.type == "cuda"  # mixed precision and channels-last only pay off on a GPU
    model.to(device, memory_format=torch.channels_last if amp else torch.contiguous_format)
    mixer = None
    if config.mixup > 0:
        from torchvision.transforms import v2

        classes = len(info.classes)
        mixer = v2.RandomChoice([v2.MixUp(alpha=config.mixup, num_classes=classes),
                                 v2.CutMix(alpha=1.0, num_classes=classes)])
    teacher = load_model_file(config.teacher).to(device) if config.mode in ("kd", "deit") else None
    params = model.param_groups(config.weight_decay) if config.mode == "finetune" else model.parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = train_size // config.batch_size
    if steps == 0:
        raise VitxError(f"--batch-size {config.batch_size} is larger than the {train_size} training images")
    scheduler = CosineLRScheduler(optimizer, t_initial=config.epochs * steps, warmup_t=int(config.warmup_epochs * steps),
                                  warmup_lr_init=config.lr * 0.01, lr_min=config.lr * 0.01, t_in_epochs=False)
    return Session(model=model, net=ddp.wrap(model, world, device), meta=meta, optimizer=optimizer,
                   scheduler=scheduler, scaler=torch.amp.GradScaler(device.type, enabled=amp),
                   ema=ModelEmaV3(model, decay=config.ema) if config.ema else None, mixer=mixer, teacher=teacher,
                   steps=steps, amp=amp)


def _restore(run: Session, state_path: Path, config: TrainConfig) -> None:
    """Continue from the state saved after the last finished epoch (same RNG streams)."""
    state = _resume_state(state_path, config)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scheduler.t_initial = config.epochs * run.steps  # --epochs may grow on resume: the cosine follows the new total
    run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.start_epoch, run.history = state["epoch"], state["history"]
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])


def _epoch(run: Session, config: TrainConfig, train_set, epoch: int, size: int, full: int, device, world,
           progress: bool) -> float:
    """One pass over the training set at `size` px (images are `full` px: the curriculum
    resizes them on the batch); returns the mean loss (summed on the
    device, so there is no host sync per step, then averaged over the ranks)."""
    loader = DataLoader(train_set, batch_size=ddp.local_batch_size(config.batch_size, world), drop_last=True,
                        **ddp.loader_order(train_set, world, config.seed, epoch, config.batch_size))
    run.model.train()
    total_loss = torch.zeros((), device=device)
    bar = tqdm(loader, desc=f"{config.mode} epoch {epoch + 1}/{config.epochs} ({size}px)", disable=not progress, leave=False)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device), y.to(device)
        x = augment_batch(config.augment, x)  # flip / affine: per image, on the batch (the split stays decoded)
        if size != full:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if run.mixer is not None:
            x, y = run.mixer(x, y)
        with torch.autocast(device.type, dtype=torch.float16, enabled=run.amp):
            loss = loss_fn(config, run.net, run.teacher, x, y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step_update(epoch * run.steps + step + 1)
        if run.ema is not None:
            run.ema.update(run.model)
        total_loss += loss.detach()
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{float(total_loss) / (step + 1):.3f}")
    return float(ddp.mean_across(total_loss, world)) / max(run.steps, 1)


def _save(run: Session, config: TrainConfig, info, out: Path, state_path: Path, epoch: int, accuracy: float) -> None:
    """The model (EMA weights when used), the full resumable state and the history, each
    written atomically: a full disk leaves the last checkpoint whole."""
    run.meta.update(dataset=config.dataset, class_names=list(info.classes), history=run.history,
                    test_accuracy=accuracy, train=asdict(config))
    try:
        save_model(run.evaluated, run.meta, out / "model")
        save_state({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
                    "ema": run.ema.state_dict() if run.ema else None, "config": asdict(config),
                    "epoch": epoch + 1, "history": run.history, "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate()}, state_path)
        write_history(out, run.history)
    except OSError as exc:  # full disk, quota
        raise space_error(out, exc) from None


def _train(config: TrainConfig, resume: bool, progress: bool, device, out: Path, info, world) -> List[dict]:
    """The epoch loop: train, evaluate (the EMA weights when used), and on rank 0 save."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    train_set, test_set = _splits(config)
    test_loader = DataLoader(test_set, batch_size=256)
    run = _session(config, device, info, world, len(train_set))
    state_path = out / "state.pt"
    if resume and state_path.exists():
        _restore(run, state_path, config)
    log = open_log(config.log, out / "tensorboard", test_set, run.start_epoch) if world.is_main else NoLog()
    try:
        for epoch in range(run.start_epoch, config.epochs):
            size = curriculum_size(config, epoch, info.size)
            started = time.time()
            loss = _epoch(run, config, train_set, epoch, size, info.size, device, world, progress)
            accuracy = evaluate(run.evaluated, test_loader, device)
            run.history.append({"epoch": epoch + 1, "size": size, "train_loss": round(loss, 6),
                                "test_accuracy": accuracy, "lr": max(g["lr"] for g in run.optimizer.param_groups),
                                "seconds": round(time.time() - started, 1)})
            if not world.is_main:
                continue  # rank 0 alone writes checkpoints and history
            if progress:
                print(f"{config.mode} epoch {epoch + 1}: loss {loss:.4f}, test accuracy {accuracy:.4f}")
            log.epoch(run.evaluated, run.history[-1])  # before the save: a resume re-logs an unsaved epoch
            _save(run, config, info, out, state_path, epoch, accuracy)
    except KeyboardInterrupt:
        done = run.history[-1]["epoch"] if run.history else 0
        print(f"\ninterrupted: {done} epoch(s) saved in {out}; continue with --resume")
    finally:
        log.close()
    return run.history
