import os
from pathlib import Path

import pytest
import torch

from torchslim.data.readers import DEFAULT_FASHION_DIR

FASHION = Path(os.environ.get("TORCHSLIM_DATA_DIR", DEFAULT_FASHION_DIR))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def fashion_dir() -> Path:
    if not (FASHION / "train-labels-idx1-ubyte.gz").exists() and not (FASHION / "train-labels-idx1-ubyte").exists():
        pytest.skip(
            f"Fashion-MNIST not found in {FASHION}; run the README set-up (apt-get install dataset-fashion-mnist)"
        )
    return FASHION
