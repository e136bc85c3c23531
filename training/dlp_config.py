"""The configuration of a DLP training run: the model and the optimisation, one YAML file.

```yaml
model: {...}   # training.models.dlp.DlpConfig fields
train: {...}   # TrainConfig fields below
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.models.dlp import Dlp, DlpConfig
from training.runs import check_train_config, load_run_model


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of ``train-dlp``."""

    # Images per optimisation step (per process under torchrun).
    batch_size: int = 32
    # Stop after this many steps...
    max_steps: int = 20000
    # ...or after this many minutes of training (0: no limit); the run can be resumed later.
    time_limit_min: float = 0.0
    # Peak learning rate of Adam; linear ramp over lr_ramp_steps, cosine decay to lr * lr_final.
    lr: float = 2e-3
    lr_ramp_steps: int = 200
    lr_final: float = 0.1
    # Gradient norm clip (0: none).
    grad_clip: float = 1.0
    # Steps of the model's warm-up phase (fixed decoder scale + glimpse reconstruction).
    warmup_steps: int = 1000
    # Evaluate on the validation split (and draw the PNG grid) every this many steps.
    eval_every: int = 500
    # Validation images used per evaluation.
    eval_images: int = 128
    # Write checkpoints/last.pt every this many steps (and at the end).
    checkpoint_every: int = 250
    # Log training metrics every this many steps.
    log_every: int = 25
    # Seed of the model init, batch sampling and posterior noise.
    seed: int = 0
    # CPU threads for torch (0: torch's default).
    threads: int = 2

    def __post_init__(self) -> None:
        positive = ('batch_size', 'max_steps', 'eval_every', 'eval_images', 'checkpoint_every',
                    'log_every')  # fmt: skip
        nonnegative = ('time_limit_min', 'grad_clip', 'warmup_steps', 'lr_ramp_steps', 'threads')
        check_train_config(self, positive, nonnegative)


@dataclass
class DlpRunConfig:
    """Everything ``train-dlp`` needs besides the data."""

    model: DlpConfig = field(default_factory=DlpConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_dlp(run_dir: Path, which: str = 'best') -> tuple[Dlp, DlpRunConfig, dict[str, Any]]:
    """The trained model of a ``train-dlp`` run directory, in eval mode, on the CPU.

    Returns the model, its run config and the checkpoint's other entries (step, metrics).
    """
    return load_run_model(run_dir, which, DlpRunConfig, lambda c: Dlp(c.model))
