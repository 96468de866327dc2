"""Datasets: every loader returns an in-memory ``ImageData`` (uint8 [N, 3, H, W] RGB, int64 labels).

Built-ins, registered on import in ``DATASETS``: ``shapes`` (the embedded default, drawn in-process), ``mnist``,
``fashion-mnist`` and ``cifar10`` (torchvision formats, offline unless ``download=true``) and ``imagefolder:PATH``
(your own images in class folders). Plugins add more through the ``benchkit.datasets`` entry-point group.

Load a split with ``benchkit.data.loading.load_dataset``.
"""

from benchkit.data import imagefolder, shapes, torchvision_sets  # noqa: F401  (registers the built-ins)
