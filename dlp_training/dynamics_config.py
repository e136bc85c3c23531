"""The configuration of a dynamics training run (``train-dynamics``): model and optimisation.

```yaml
model: {...}   # dlp_training.models.dynamics.DynamicsConfig fields (K, F, Fb: as the latents)
train: {...}   # DynamicsTrainConfig fields below; train.loss: RolloutLossWeights fields
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlp_ros.config_schema import Check, check_fields, checked
from dlp_training.clips import RESEEDED_MODES
from dlp_training.loop import ScheduleConfig
from dlp_training.models.dynamics import DynamicsConfig, ParticleDynamics, RolloutLossWeights
from dlp_training.runs import load_run_model


@dataclass(frozen=True)
class DynamicsTrainConfig(ScheduleConfig):
    """Optimisation and bookkeeping of ``train-dynamics``: the shared schedule (batch_size counts
    clips) and the fields below."""

    max_steps: int = checked(30000, ge=1)
    lr: float = checked(1e-3, gt=0)
    # Observed frames of a clip before the rollout (>= model.history and >= 2: the
    # constant-velocity baseline needs two); the model reads the last model.history of them.
    burn_in: int = checked(4, ge=1)
    # Curriculum of the rollout horizon: horizon_start predicted frames at step 0, growing
    # linearly to horizon at horizon_ramp_steps (dlp_training.models.dynamics.curriculum_horizon).
    # Clips always hold burn_in + horizon frames; validation always rolls out the full horizon.
    horizon: int = checked(10, ge=1)
    horizon_start: int = checked(1, ge=1)
    horizon_ramp_steps: int = checked(5000, ge=0)
    # Weights of the particle-space rollout loss terms.
    loss: RolloutLossWeights = field(default_factory=RolloutLossWeights)
    # Pixel loss through the frozen DLP decoder (0: off): MSE between the decoded predicted
    # particles and the decoded target particles of pixel_loss_clips clips x pixel_loss_steps
    # random predicted steps per optimisation step.
    pixel_loss_weight: float = checked(0.0, ge=0)
    pixel_loss_clips: int = checked(4, ge=1)
    pixel_loss_steps: int = checked(2, ge=1)
    # train-dlp run of the decoder ('' : the latents manifest's source.dlp_run) and its
    # checkpoint ('' : the latents' source checkpoint, 'best' or 'last').
    dlp_run: str = ''
    dlp_checkpoint: str = checked('', choices=('', 'best', 'last'))
    # Columns of the latents' actions fed to the model (None: all); their number must equal
    # model.action_dim. E.g. [0, 1] = linear.x, linear.y of a Twist command.
    action_columns: list[int] | None = checked(None, items=Check(ge=0))
    # A particle slot re-seeded (a new identity) after a clip's first frame jumps, and a jump is
    # not dynamics: 'mask' drops that slot of that clip from the losses and metrics, 'skip'
    # leaves the whole clip out (with a busy tracker that leaves few clips), 'keep' trains on it.
    reseeded: str = checked('mask', choices=RESEEDED_MODES)
    # A train-dynamics run directory whose best weights start this run (fine-tuning, e.g. with
    # the pixel loss or a longer horizon); its model config must equal this one. None: random.
    init_from: str | None = None
    # Clips of the val split (evenly spaced) each validation rolls out.
    eval_clips: int = checked(256, ge=1)
    # Mirror augmentation: each training clip is mirrored across each listed image axis ('x':
    # left-right, 'y': up-down) with probability 1/2 (positions negated along that axis, every
    # other attribute kept). Only for scenes whose physics has that symmetry (the tabletop's
    # left-right mirror is exact; up-down holds up to the camera's 10 degree tilt).
    flip: list[str] = checked(factory=list, items=Check(choices=('x', 'y')))
    # With flip and actions: the image axis along which each model action entry points ('x',
    # 'y'; '' for an entry no mirror changes); a mirror across that axis negates it. E.g. the
    # tabletop's [vx, vy] command: ['x', 'y'].
    action_axes: list[str] | None = checked(None, items=Check(choices=('x', 'y', '')))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.horizon_start > self.horizon:
            raise ValueError(
                f'train.horizon_start ({self.horizon_start}) must be <= train.horizon '
                f'({self.horizon})'
            )
        if len(set(self.flip)) != len(self.flip):
            raise ValueError(f'train.flip must list distinct axes, got {self.flip}')
        if self.action_columns is not None and (
            len(set(self.action_columns)) != len(self.action_columns)
        ):
            raise ValueError(f'train.action_columns must be distinct indices >= 0, got '
                             f'{self.action_columns}')  # fmt: skip


@dataclass
class DynamicsRunConfig:
    """Everything ``train-dynamics`` needs besides the latents."""

    model: DynamicsConfig = field(default_factory=DynamicsConfig)
    train: DynamicsTrainConfig = field(default_factory=DynamicsTrainConfig)

    def __post_init__(self) -> None:
        m, t = self.model, self.train
        if t.burn_in < max(m.history, 2):
            raise ValueError(f'train.burn_in ({t.burn_in}) must be >= model.history '
                             f'({m.history}) and >= 2')  # fmt: skip
        if t.flip and m.action_dim and (t.action_axes is None
                                        or len(t.action_axes) != m.action_dim):  # fmt: skip
            raise ValueError(f'train.flip {t.flip} with actions needs train.action_axes: one axis '
                             f'per action entry (model.action_dim {m.action_dim}), got '
                             f'{t.action_axes}')  # fmt: skip
        cols = t.action_columns
        if cols is not None and len(cols) != m.action_dim:
            raise ValueError(f'train.action_columns {cols} pick {len(cols)} action entries but '
                             f'model.action_dim is {m.action_dim}')  # fmt: skip


def load_dynamics(
    run_dir: Path, which: str = 'best'
) -> tuple[ParticleDynamics, DynamicsRunConfig, dict[str, Any]]:
    """The trained model of a ``train-dynamics`` run directory, in eval mode, on the CPU.

    Returns the model, its run config and the checkpoint's other entries (step, metrics,
    ``latents``: path, fps, image size and action names of the training data).
    """
    return load_run_model(run_dir, which, DynamicsRunConfig, lambda c: ParticleDynamics(c.model))
