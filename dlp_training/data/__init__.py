"""Episodes: synthetic recorders that write rosbag2, and the dataset cache built from bags."""
