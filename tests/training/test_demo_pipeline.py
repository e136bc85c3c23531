"""The main job's data path end to end: MuJoCo tabletop bags -> dataset -> preview image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dlp_training.__main__ import main
from dlp_training.data.dataset import Dataset


def test_tabletop_bags_to_dataset_to_preview(tmp_path: Path) -> None:
    bags = tmp_path / 'bags'
    argv = [
        'record-synthetic',
        'tabletop',
        '--episodes',
        '3',
        '--frames',
        '20',
        '--out',
        str(bags),
    ]
    assert main([*argv, '--storage', 'sqlite3', '--seed', '7']) == 0
    data_dir = tmp_path / 'data'
    assert (
        main(
            [
                'build-dataset',
                '--bags',
                *(str(p) for p in sorted(bags.glob('episode_*/'))),
                '--topic',
                '/camera/image_raw',
                '--action-topic',
                '/tabletop/command',
                '--size',
                '64',
                '--fps',
                '5',
                '--out',
                str(data_dir),
                '--no-progress',
            ]
        )  # fmt: skip
        == 0
    )
    data = Dataset.open(data_dir)
    assert len(data) == 3 and {e.split for e in data.episodes()} == {'train', 'val', 'test'}
    info = data.episodes()[0]
    frames, labels = data.frames(info.name), data.labels(info.name)
    assert frames.shape == (10, 64, 64, 3)  # 20 frames at 10 Hz resampled to 5 fps
    assert np.all(np.diff(labels.stamps_ns) == 200_000_000)
    truth = labels.ground_truth
    assert truth is not None and truth.names[0] == 'pusher' and 4 <= len(truth.ids) <= 6
    assert labels.actions is not None and labels.actions.shape[0] == 10
    assert labels.action_valid.all()  # a command is recorded with every frame
    assert np.abs(labels.actions[:, :2]).max() > 0  # the pusher moves

    preview = tmp_path / 'preview.png'
    assert main(['preview-dataset', '--data', str(data_dir), '--out', str(preview)]) == 0
    sheet = cv2.imread(str(preview))
    assert sheet is not None and sheet.shape == (3 * 96, 8 * 96, 3)
