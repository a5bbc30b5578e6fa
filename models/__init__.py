"""Segmentation models, nothing about DICOM: task specs, networks, inference, training,
evaluation and the model registry. Imports torch, monai and numpy only."""
