"""Input-domain warnings on real images: in-domain images pass, plainly foreign ones are named."""

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from zoo.domain import INPUT_DOMAINS, domain_warning, image_measures
from zoo.io import read_image


def _he_image() -> np.ndarray:
    """The H&E tile shipped in the tiatoolbox wheel (installed with --no-deps)."""
    spec = find_spec('tiatoolbox')
    if spec is None:
        pytest.skip('tiatoolbox (its sample H&E image) is not installed: pip install --no-deps tiatoolbox')
    return read_image(Path(spec.origin).parent / 'data' / 'target_image.png')


def _fashion_mnist(count: int) -> np.ndarray:
    from training.data import load_fashion_mnist

    return load_fashion_mnist('test')[0][:count]


def _fluorescence() -> np.ndarray:
    from training.data import load_stardist_sample

    return load_stardist_sample().image


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def test_fashion_mnist_images_pass_and_photos_are_named():
    for image in _fashion_mnist(1000):
        assert domain_warning(_rgb(image), 'fashion-mnist') is None
    photo = domain_warning(skimage.data.astronaut(), 'fashion-mnist')
    assert photo == (
        "does not look like the model's input (Fashion-MNIST: 28x28 grey product photos, a light object on a "
        'black background): it is a colour image (colourfulness 73; grey is 0); predictions may be meaningless'
    )
    grey_photo = domain_warning(_rgb(skimage.data.camera()), 'fashion-mnist')
    assert 'its border is not black (median grey level 165 of 255)' in grey_photo
    assert 'it is a colour image' in domain_warning(_he_image(), 'fashion-mnist')


def test_fluorescence_passes_and_brightfield_is_named():
    assert domain_warning(_fluorescence(), 'fluorescence') is None
    he = _he_image()
    for top, left in [(0, 0), (0, 500), (500, 0), (500, 500)]:  # every 500px quarter of the tile, too
        warning = domain_warning(he[top : top + 500, left : left + 500], 'fluorescence')
        assert 'its background is light' in warning and 'as in brightfield' in warning
    assert 'fluorescence microscopy: bright nuclei on a dark background' in domain_warning(he, 'fluorescence')


def test_he_passes_and_fluorescence_grey_and_photos_are_named():
    he = _he_image()
    assert domain_warning(he, 'he') is None
    for top, left in [(0, 0), (0, 500), (500, 0), (500, 500)]:
        assert domain_warning(he[top : top + 500, left : left + 500], 'he') is None
    assert 'its background is dark (median grey level 21 of 255), as in fluorescence' in domain_warning(
        _fluorescence(), 'he'
    )
    assert 'it is (nearly) grey' in domain_warning(_rgb(skimage.data.camera()), 'he')
    assert "its colours are not H&E's pink and purple" in domain_warning(skimage.data.astronaut(), 'he')
    assert "its colours are not H&E's pink and purple" in domain_warning(skimage.data.coffee(), 'he')


def test_unknown_domain_checks_nothing_and_a_misspelt_one_is_a_bug():
    assert domain_warning(skimage.data.astronaut(), None) is None
    with pytest.raises(
        ValueError, match=r"unknown input domain 'H&E'; known: \['fashion-mnist', 'fluorescence', 'he'\]"
    ):
        domain_warning(skimage.data.astronaut(), 'H&E')
    assert set(INPUT_DOMAINS) == {'fashion-mnist', 'fluorescence', 'he'}


def test_measures_of_grey_and_large_images():
    grey = _rgb(np.full((3000, 2000), 7, np.uint8))  # subsampled to about a million pixels
    assert image_measures(grey) == pytest.approx(dict(colourfulness=0, median=7, border_median=7, pinkness=0))
