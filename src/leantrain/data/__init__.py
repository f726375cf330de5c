"""Data sets, readers, augmentation and the in-memory tensor loader.

Typical use::

    from leantrain.data import load_dataset, TensorLoader

    train, test, spec = load_dataset("cifar10", "/path/to/data", train_subset=10_000)
    loader = TensorLoader(train, spec, batch_size=128, train=True, device="cuda")
    for epoch in range(10):
        for images, labels in loader.epoch(epoch):
            ...
"""

from .augment import crop_at, flip_where, normalize, random_crop, random_flip
from .datasets import (
    DatasetSpec,
    SubsetWarning,
    balanced_subset_indices,
    dataset_names,
    get_spec,
    load_dataset,
    resolve_cache_dir,
    resolve_data_dir,
)
from .download import DownloadError, download
from .formats import (
    DataFormatError,
    DataNotFoundError,
    Split,
    read_cifar10,
    read_idx,
    read_image_folder,
    read_mnist,
)
from .loaders import TensorLoader, epoch_seed

__all__ = [
    "DataFormatError",
    "DataNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "Split",
    "SubsetWarning",
    "TensorLoader",
    "balanced_subset_indices",
    "crop_at",
    "dataset_names",
    "download",
    "epoch_seed",
    "flip_where",
    "get_spec",
    "load_dataset",
    "normalize",
    "random_crop",
    "random_flip",
    "read_cifar10",
    "read_idx",
    "read_image_folder",
    "read_mnist",
    "resolve_cache_dir",
    "resolve_data_dir",
]
