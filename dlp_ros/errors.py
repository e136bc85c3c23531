"""Error types of dlp_ros. Every error names the input that was wrong and what was expected."""


class DlpError(Exception):
    """Root of all dlp_ros errors."""


class ImageError(DlpError, ValueError):
    """A camera frame could not be decoded (encoding, size or data are wrong)."""


class EpisodeError(DlpError):
    """A recorded episode (rosbag2) cannot be used: missing topic, empty or truncated bag, ..."""


class ModelCardError(DlpError):
    """A model bundle or its model card is missing, malformed or not understood."""


class ConfigError(DlpError, ValueError):
    """A configuration value is unknown or out of range."""
