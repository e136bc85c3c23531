"""pip install of the pure-Python parts, for machines without ROS (robots, GPU training boxes).

colcon ignores this file: package.xml declares ament_cmake, which builds the messages.

The wheel carries ``dlp_ros`` (runtime, offline tools, simulation; no messages, no node),
``dlp_training`` with its configs (``dlp_training/configs/*.yaml``) and the default model bundles
as data files in ``<prefix>/share/dlp_ros/bundles/<name>/``, where colcon installs them too.

OpenCV is declared once per kind of install: a ROS install gets ``python3-opencv`` from
package.xml (rosdep), so the ``ros-*`` extras leave it out; the plain extras (``cpu``, ``gpu``,
``train``, ``offline``, ``sim``) bring ``opencv-python-headless`` for machines without ROS.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
OPENCV = ['opencv-python-headless>=4.8']
TRAIN = [
    'torch==2.13.0',
    'torch-geometric==2.8.1',
    'onnx==1.23.2',
    'rosbags==0.11.9',
    'mujoco==4.0.0',
    'scipy>=1.10',
    'tqdm>=4.60',
    'tensorboard==2.21.0',  # event files of the training runs (optional)
]
ORT_CPU = ['onnxruntime>=1.20']
ORT_GPU = ['onnxruntime-gpu==1.31.1']


def bundle_files() -> list[tuple[str, list[str]]]:
    """``(share/dlp_ros/bundles/<name>, [its files])`` for each bundle of the checkout."""
    entries = [('share/dlp_ros/bundles', ['bundles/README.md'])]
    for card in sorted((HERE / 'bundles').glob('*/model_card.yaml')):
        files = sorted(p for p in card.parent.iterdir() if p.is_file())
        entries.append(
            (
                f'share/dlp_ros/bundles/{card.parent.name}',
                [str(p.relative_to(HERE)) for p in files],
            )
        )
    return entries


setup(
    name='dlp-ros',
    version='0.1.0',
    description='Deep Latent Particles and GNN particle dynamics for ROS 2',
    python_requires='>=3.10',
    packages=find_packages(include=['dlp_ros', 'dlp_ros.*', 'dlp_training', 'dlp_training.*']),
    package_data={'dlp_training': ['configs/*.yaml']},
    data_files=bundle_files(),
    install_requires=['numpy>=1.23', 'pyyaml>=6'],
    extras_require={
        # Without ROS: each extra brings OpenCV (pip's opencv-python-headless).
        'cpu': ORT_CPU + OPENCV,  # a robot's runtime: node-free tools, dlp-replay needs [offline]
        'gpu': ORT_GPU + OPENCV,
        'train': TRAIN + OPENCV,
        'offline': ['rosbags==0.11.9', *OPENCV],
        'sim': ['mujoco==4.0.0', *OPENCV],  # tabletop_sim and evaluate-planning (dlp_ros.sim)
        # In a ROS install: the same without OpenCV (python3-opencv comes from rosdep).
        'ros-cpu': ORT_CPU,
        'ros-gpu': ORT_GPU,
        'ros-train': TRAIN,
    },
    entry_points={
        'console_scripts': [
            'dlp-train = dlp_training.__main__:main',
            'dlp-replay = dlp_ros.offline.replay:main',
        ]
    },
)
