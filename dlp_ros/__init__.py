"""dlp_ros: Deep Latent Particles for ROS 2.

Importing this package loads nothing heavy. The generated message modules (``dlp_ros.msg``) live in
the colcon install tree; ``__path__`` is extended so that they are found even when this source tree
comes first on ``sys.path`` (running from a checkout).
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = '0.1.0'
