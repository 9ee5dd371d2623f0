"""Datasets for redr: KMNIST, Fashion-MNIST and HIGGS as whole tensors on the training device.

``load_dataset`` finds (or downloads and verifies) the files, ``batch_indices`` batches by index permutation,
``RandomAffine`` augments image batches on the device. See ``docs/data.md``.
"""
from redr.data.augment import RandomAffine
from redr.data.batching import batch_indices
from redr.data.dataset import Dataset, load_dataset
from redr.data.paths import resolve_cache_dir, resolve_data_dir
from redr.data.registry import DATASETS

__all__ = ["load_dataset", "Dataset", "batch_indices", "RandomAffine", "resolve_data_dir", "resolve_cache_dir",
           "DATASETS"]
