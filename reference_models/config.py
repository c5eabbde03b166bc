"""A training run's settings, on their own: the trainer, the fine-tuning builder and the
checkpoint reader all read them, and none of them should have to import another for it."""
from dataclasses import dataclass, field
from typing import List, Optional

MODES = ("teacher", "baseline", "kd", "deit", "finetune")
AUGMENTS = ("default", "flip", "affine", "affine-half", "none")


@dataclass
class TrainConfig:
    dataset: str = "fashion_mnist"
    mode: str = "baseline"
    out: str = "runs/model"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0
    teacher: Optional[str] = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.5
    kd_hard: bool = False
    deit_soft: bool = False  # deit: the dist token learns the teacher's softened outputs (KL), not its labels
    curriculum: List[int] = field(default_factory=list)
    ema: float = 0.0
    mixup: float = 0.0
    augment: str = "default"  # default (the dataset's transforms); flip, affine, affine-half, none: on the batch, in memory
    teacher_width: int = 16
    train_limit: int = 0
    test_limit: int = 0
    data_dir: Optional[str] = None
    download: bool = True
    device: str = "cpu"
    log: str = "none"  # none, or tensorboard (OUT/tensorboard; see watch.py)
    vit: dict = field(default_factory=dict)
