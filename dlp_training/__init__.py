"""Offline side of dlp_ros: episodes from rosbag2, training, evaluation and export.

Run ``python -m dlp_training --help`` (or ``dlp-train --help``) for the commands.
"""
