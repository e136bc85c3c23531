"""pip install of the pure-Python parts, for machines without ROS (e.g. GPU training boxes).

colcon ignores this file: package.xml declares ament_cmake, which builds the messages.
"""

from setuptools import find_packages, setup

setup(
    name='dlp-ros',
    version='0.1.0',
    description='Deep Latent Particles and GNN particle dynamics for ROS 2',
    python_requires='>=3.10',
    packages=find_packages(include=['dlp_ros', 'dlp_ros.*', 'training', 'training.*']),
    package_data={'training': ['configs/*.yaml']},
    install_requires=['numpy>=1.23', 'pyyaml>=6', 'opencv-python-headless>=4.8'],
    extras_require={
        'train': [
            'torch==2.13.0',
            'torch-geometric==2.8.1',
            'onnx==1.23.2',
            'rosbags==0.11.9',
            'mujoco==4.0.0',
            'scipy>=1.10',
            'tqdm>=4.60',
            'tensorboard==2.21.0',  # event files of the training runs (optional)
        ],
        'offline': ['rosbags==0.11.9'],
        'sim': ['mujoco==4.0.0'],  # tabletop_sim and evaluate-planning (dlp_ros.sim)
        'gpu': ['onnxruntime-gpu==1.31.1'],
        'cpu': ['onnxruntime>=1.20'],
    },
    entry_points={
        'console_scripts': [
            'dlp-train = training.__main__:main',
            'dlp-replay = dlp_ros.offline.replay:main',
        ]
    },
)
