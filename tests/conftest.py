import os

# Keep tests offline and reproducible whatever the caller's environment says.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

import pytest
import torch

# Fixtures shared across test folders (tests/ is on the path, see pyproject.toml).
pytest_plugins = ['_hub_fixtures']

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
