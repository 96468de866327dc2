"""The distortion battery on the classifier features alone, as the ``dataset`` network was before it gained colour
statistics, an edge layout and noise/blur augmentation: the "before" column of that change.

    python benchmarks/battery_classifier_only.py shapes
    python tests/colour_folder.py /tmp/colours 1000
    python benchmarks/battery_classifier_only.py imagefolder:/tmp/colours

Compare with ``benchkit eval --sanity --set eval.num_samples=2000`` (the current ``dataset`` features).
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console

from benchkit.data.base import to_float
from benchkit.data.loading import load_dataset
from benchkit.metrics.battery import battery_table, check_requirements, run_battery
from benchkit.metrics.classifier import DatasetCNNConfig, train_classifier


class ClassifierFeatures:
    """The pooled last-conv features of a classifier trained without noise or blur augmentation."""

    def __init__(self, data: object) -> None:
        plain = DatasetCNNConfig(noise_std=0.0, blur_sigma=0.0)
        self.net, self.stats = train_classifier(data, plain, torch.device("cpu"))  # type: ignore[arg-type]
        self.tag = "classifier features only (no augmentation)"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net.features(to_float(images[i : i + 500])) for i in range(0, len(images), 500)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="shapes, imagefolder:PATH, ...")
    parser.add_argument("--n", type=int, default=2000, help="images per side")
    args = parser.parse_args()
    train, test = load_dataset(args.dataset, split="train"), load_dataset(args.dataset, split="test")
    battery = run_battery(train, test, ClassifierFeatures(train), args.n)  # type: ignore[arg-type]
    for renderable in battery_table(battery, check_requirements(battery)):
        Console(width=140).print(renderable)


if __name__ == "__main__":
    main()
