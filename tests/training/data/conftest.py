import pytest
from _segment_oracle import tiny_run


@pytest.fixture(scope='session')
def run(tmp_path_factory):
    """A run directory of a small real segmentation net: the model of the readers' command-line tests."""
    return tiny_run(tmp_path_factory.mktemp('run') / 'tiny')
