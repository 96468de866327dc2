"""A randomly initialised torch-fidelity Inception-V3 saved in the file format torch-fidelity loads.

torch-fidelity's ``FeatureExtractorInceptionV3`` reads ``torch.load(path)`` as its ``state_dict``; this writes such a
file from a random instance, so the ``inception`` feature path runs without the real weights (no download). Run
``python tests/random_inception.py PATH`` to write one for ``benchkit eval --sanity --set eval.features=inception``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """Save the ``state_dict`` of a FeatureExtractorInceptionV3 with random (Kaiming) convolutions at ``path``."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    cls = fe.FeatureExtractorInceptionV3
    # Its constructor always loads weights (a download when no path is given): stub both to get a random instance.
    with (
        mock.patch.object(fe, "load_state_dict_from_url", return_value=None),
        mock.patch.object(cls, "load_state_dict", lambda self, sd, strict=True: None),
    ):
        net = cls("tmp-random-inception", ["2048"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):  # default init shrinks activations to denormals: slow on CPU
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/random_inception.py PATH")
    print(write_random_inception(Path(sys.argv[1])))
