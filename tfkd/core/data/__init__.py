"""tfkd.core.data: datasets as uint8 tensors, seeded stratified splits, and fast batch loaders.

    ds = load("cifar100", "./data", val_fraction=0.1, seed=0)
    loader = DeviceLoader(ds.train, batch_size=128, train=True, device="cuda", seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader: ...

Datasets are registered in `sources.py` (one decorated function each); `names()` lists them.
`DeviceLoader` keeps the data on the accelerator and augments whole batches there;
`ClassicLoader` is the original PIL + torchvision-transforms + DataLoader pipeline (for
comparison and benchmarks); `JpegLoader` reads image folders (`imagenet`, `folder`: a FileSplit
of JPEG files, see folders.py and images.py). `make_loader(kind, split, ...)` picks one.
"""

from . import folders as _folders  # noqa: F401  (registers imagenet and folder)
from . import sources as _sources  # noqa: F401  (registers the built-in datasets)
from .augment import (
    AUGMENTATIONS,
    AugmentParams,
    apply_params,
    augment_batch,
    parse_augment,
    sample_params,
)
from .core import (
    DATASETS,
    AnySplit,
    DataError,
    Dataset,
    DatasetNotFoundError,
    ImageFiles,
    Images,
    Request,
    Source,
    Split,
    channel_stats,
    clear_cache,
    load,
    names,
    register,
    stratified_split,
)
from .folders import FileImages, FileSplit
from .loaders import (
    LOADERS,
    SAMPLERS,
    ClassicLoader,
    DeviceLoader,
    JpegLoader,
    Sampler,
    Shuffle,
    make_loader,
)

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "LOADERS",
    "SAMPLERS",
    "AnySplit",
    "AugmentParams",
    "ClassicLoader",
    "DataError",
    "Dataset",
    "DatasetNotFoundError",
    "DeviceLoader",
    "FileImages",
    "FileSplit",
    "ImageFiles",
    "Images",
    "JpegLoader",
    "Request",
    "Sampler",
    "Shuffle",
    "Source",
    "Split",
    "apply_params",
    "augment_batch",
    "channel_stats",
    "clear_cache",
    "load",
    "make_loader",
    "names",
    "parse_augment",
    "register",
    "sample_params",
    "stratified_split",
]
