"""Models of dlp_ros: the DLP per-frame VAE (``dlp``) and, later, the particle dynamics."""

from dlp_training.models.dlp import DLP_PRESETS, Dlp, DlpConfig, DlpDecoder, DlpEncoder, Particles

__all__ = ['DLP_PRESETS', 'Dlp', 'DlpConfig', 'DlpDecoder', 'DlpEncoder', 'Particles']
