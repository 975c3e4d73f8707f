"""Datasets: collection (`masklam collect`), the HDF5 layout, the papers' own layouts (peers: MaskLAM's parquet,
LAOM's HDF5), every external format behind one reader interface (sources: video, image folders, LeRobot;
`masklam import` / `masklam export`), and fast trajectory windows for training."""
from masklam.data.dataset import TrajectoryData, WindowSampler, labeled_subset, load_dataset, split_trajectories
from masklam.data.hdf5 import FORMAT_VERSION, FileLayout, Trajectory, read_layout, read_trajectory, write_trajectory

__all__ = [
    "FORMAT_VERSION", "FileLayout", "Trajectory", "TrajectoryData", "WindowSampler", "labeled_subset",
    "load_dataset", "read_layout", "read_trajectory", "split_trajectories", "write_trajectory",
]
