"""A model bundle from tiny random-weight models, for node tests (seconds on a CPU, no data).

Importable (``make_tiny_bundle``) or run as a script:
    python tests/ros/tiny_bundle.py OUT_DIR [--action-dim 2] [--dt 0.05]
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Sizes of dlp_training/configs/dlp_tiny.yaml and dynamics_tiny.yaml (K = F = Fb = 4, S = 64).
DLP_TINY = {
    'S': 64,
    'K': 4,
    'n_proposals': 6,
    'prior_channels': (8, 8),
    'glimpse_channels': (8, 16),
    'hidden_dim': 32,
    'F': 4,
    'Fb': 4,
    'decoder_channels': (16, 8),
    'bg_encoder_channels': (8, 8, 16, 16),
    'bg_decoder_channels': (16, 8, 8, 8),
}
DYNAMICS_TINY = {
    'K': 4,
    'F': 4,
    'Fb': 4,
    'history': 2,
    'hidden_dim': 16,
    'n_layers': 1,
    'identity_init': False,  # random dynamics: predictions move and depend on the actions
}
ACTION_NAMES = ('linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z')


def make_tiny_bundle(out: Path, action_dim: int = 0, dt: float = 0.05, seed: int = 0) -> Path:
    """Export random tiny DLP + dynamics models into the bundle directory ``out``.

    With ``action_dim`` A > 0 the card names the actions after the first A TwistStamped fields
    (linear.x, linear.y, ...). ``validation.recon_mse`` is set to a fixed 0.01 (no data set), so
    the OOD score is defined.
    """
    import torch
    import yaml

    from dlp_training.export import BundleInfo, export_bundle
    from dlp_training.models.dlp import Dlp, DlpConfig
    from dlp_training.models.dynamics import DynamicsConfig, ParticleDynamics

    torch.manual_seed(seed)
    dlp = Dlp(DlpConfig(**DLP_TINY)).eval()
    dynamics = ParticleDynamics(DynamicsConfig(**DYNAMICS_TINY, action_dim=action_dim)).eval()
    info = BundleInfo(dt=dt, action_names=ACTION_NAMES[:action_dim])
    export_bundle(dlp, dynamics, Path(out), info, overwrite=True)
    card_path = Path(out) / 'model_card.yaml'
    card = yaml.safe_load(card_path.read_text())
    card['validation']['recon_mse'] = 0.01
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', type=Path)
    parser.add_argument('--action-dim', type=int, default=0)
    parser.add_argument('--dt', type=float, default=0.05)
    args = parser.parse_args()
    print(make_tiny_bundle(args.out, args.action_dim, args.dt))


if __name__ == '__main__':
    main()
