"""The configuration of a DLP training run: the model and the optimisation, one YAML file.

```yaml
model: {...}   # dlp_training.models.dlp.DlpConfig fields
train: {...}   # DlpTrainConfig fields below (dlp_training.loop.ScheduleConfig + its own)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlp_ros.config_schema import checked
from dlp_training.loop import ScheduleConfig
from dlp_training.models.dlp import Dlp, DlpConfig
from dlp_training.runs import load_run_model


@dataclass(frozen=True)
class DlpTrainConfig(ScheduleConfig):
    """Optimisation and bookkeeping of ``train-dlp``: the shared schedule (batch_size counts
    images, eval_every draws the PNG grid too) and the fields below."""

    max_steps: int = checked(20000, ge=1)
    lr: float = checked(2e-3, gt=0)
    # Steps of the model's warm-up phase (fixed decoder scale + glimpse reconstruction).
    warmup_steps: int = checked(1000, ge=0)
    # Validation images used per evaluation.
    eval_images: int = checked(128, ge=1)
    # Frames per training clip: 1 trains frame by frame; T > 1 trains on clips of T consecutive
    # frames encoded as the runtime tracks them (Dlp.clip_loss), batch_size clips per step.
    clip_length: int = checked(1, ge=1)
    # Clips only: weight of the particles' appearance change from frame to frame.
    track_feature_weight: float = checked(0.0, ge=0)
    # A train-dlp run directory whose best weights start this run (fine-tuning, e.g. a
    # per-frame run continued on clips); its model config must equal this one. None: random.
    init_from: str | None = None
    # What the optimiser trains: 'all', or 'decoder' (the glimpse and background decoders; the
    # encoder and prior stay frozen, so the particles, and a dynamics trained on them, are those
    # of init_from; no warm-up phase).
    trainable: str = checked('all', choices=('all', 'decoder'))
    # What the decoder reads in training: 'samples' of the posterior, or its 'means' (what the
    # runtime decodes); 'auto': samples when everything trains, means for a decoder fine-tune.
    posterior: str = checked('auto', choices=('auto', 'samples', 'means'))

    @property
    def decodes_means(self) -> bool:
        """Whether training decodes the posterior means (else samples)."""
        if self.posterior == 'auto':
            return self.trainable == 'decoder'
        return self.posterior == 'means'

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trainable == 'decoder' and not self.init_from:
            raise ValueError("train.trainable: 'decoder' needs train.init_from (the run whose "
                             'encoder stays frozen)')  # fmt: skip


@dataclass
class DlpRunConfig:
    """Everything ``train-dlp`` needs besides the data."""

    model: DlpConfig = field(default_factory=DlpConfig)
    train: DlpTrainConfig = field(default_factory=DlpTrainConfig)


def load_dlp(run_dir: Path, which: str = 'best') -> tuple[Dlp, DlpRunConfig, dict[str, Any]]:
    """The trained model of a ``train-dlp`` run directory, in eval mode, on the CPU.

    Returns the model, its run config and the checkpoint's other entries (step, metrics).
    """
    return load_run_model(run_dir, which, DlpRunConfig, lambda c: Dlp(c.model))
