"""``zoo.io.read_image``: the one image reader decodes deliberately and refuses what it cannot read faithfully."""

import numpy as np
import pytest
import tifffile
from _helpers import png_header_only
from PIL import Image

from zoo.io import ImageReadError, max_image_pixels, read_image, to_grey

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)


def _error(path, **kwargs) -> str:
    with pytest.raises(ImageReadError) as caught:
        read_image(path, **kwargs)
    message = str(caught.value)
    assert '\n' not in message and message.startswith(str(path)), message
    return message


# ------------------------------------------------------------------------------------------- 8-bit


def test_8_bit_rgb_png_and_tiff_are_read_as_stored(tmp_path):
    Image.fromarray(RGB).save(tmp_path / 'x.png')
    tifffile.imwrite(tmp_path / 'x.tif', RGB)
    tifffile.imwrite(tmp_path / 'planar.tif', np.moveaxis(RGB, -1, 0), planarconfig='separate', photometric='rgb')
    for name in ('x.png', 'x.tif', 'planar.tif'):
        np.testing.assert_array_equal(read_image(tmp_path / name), RGB)


def test_grey_is_repeated_and_alpha_dropped(tmp_path):
    grey = RGB[..., 0]
    Image.fromarray(grey).save(tmp_path / 'grey.png')
    Image.fromarray(np.dstack([RGB, np.zeros_like(grey)])).save(tmp_path / 'rgba.png')
    np.testing.assert_array_equal(read_image(tmp_path / 'grey.png'), np.dstack([grey] * 3))
    np.testing.assert_array_equal(read_image(tmp_path / 'rgba.png'), RGB)


def test_min_is_white_tiff_is_inverted(tmp_path):
    grey = RGB[..., 0]
    tifffile.imwrite(tmp_path / 'w.tif', 255 - grey, photometric='miniswhite')
    np.testing.assert_array_equal(read_image(tmp_path / 'w.tif')[..., 0], grey)


def test_to_grey_is_pillows_luma():
    expected = np.asarray(Image.fromarray(RGB).convert('L'))
    np.testing.assert_array_equal(to_grey(RGB), expected)
    np.testing.assert_array_equal(to_grey(np.dstack([RGB[..., 1]] * 3)), RGB[..., 1])


# ------------------------------------------------------------------------------ 16-bit and float


def test_16_bit_grey_is_scaled_by_percentiles_not_clipped(tmp_path):
    """The issue's case: a 16-bit grey TIFF became white through Pillow's convert('L')."""
    ramp = np.linspace(1000, 4000, 28 * 28).reshape(28, 28).astype(np.uint16)  # a 12-bit camera's range
    tifffile.imwrite(tmp_path / 'g16.tif', ramp)
    Image.fromarray(ramp).save(tmp_path / 'g16.png')  # Pillow mode I;16
    for name in ('g16.tif', 'g16.png'):
        image = read_image(tmp_path / name)[..., 0]
        low, high = np.percentile(ramp, (1, 99.8))
        expected = np.round(np.clip((ramp - low) / (high - low), 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(image, expected)
        assert (image == 255).mean() < 0.01 and (image == 0).mean() < 0.02  # the full range, not white


def test_float_in_unit_range_is_multiplied_by_255_and_other_floats_scaled(tmp_path):
    unit = RNG.random((30, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / 'unit.tif', unit)
    np.testing.assert_array_equal(read_image(tmp_path / 'unit.tif')[..., 0], np.round(unit * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / 'wide.tif', unit * 1000 - 300)
    wide = read_image(tmp_path / 'wide.tif')[..., 0]
    assert np.corrcoef(wide.ravel(), unit.ravel())[0, 1] > 0.99 and wide.max() == 255 and wide.min() == 0


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_pixels_are_refused(tmp_path, bad):
    """The issue's case: a NaN TIFF became black and the segmenter reported 0 nuclei."""
    image = RNG.random((20, 20)).astype(np.float32)
    image[3, 4] = bad
    tifffile.imwrite(tmp_path / 'nan.tif', image)
    assert _error(tmp_path / 'nan.tif').endswith(
        ': 1 of 400 values are NaN or infinite; replace them (e.g. with 0) and save it again'
    )


def test_a_constant_16_bit_image_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / 'flat.tif', np.full((8, 8), 700, np.uint16))
    assert _error(tmp_path / 'flat.tif').endswith(': every pixel is 700: an empty uint16 image, nothing to scale')


# ------------------------------------------------------------------------------------ refused files


def test_truncated_png_jpeg_and_tiff(tmp_path):
    for suffix in ('png', 'jpg', 'tif'):
        whole = tmp_path / f'whole.{suffix}'
        (tifffile.imwrite(whole, RGB) if suffix == 'tif' else Image.fromarray(RGB).save(whole))
        data = whole.read_bytes()
        cut = tmp_path / f'cut.{suffix}'
        cut.write_bytes(data[: len(data) // 2])
        message = _error(cut)
        assert 'cannot decode this' in message and message.endswith('the file is damaged or incomplete'), message
    assert 'image file is truncated' in _error(tmp_path / 'cut.png')


@pytest.mark.parametrize(
    'make,message',
    [
        (lambda p: p.write_bytes(b''), ': the file is empty (0 bytes)'),
        (lambda p: p.write_text('just some text\n'), ': not an image file (neither Pillow nor tifffile can read it)'),
        (lambda p: p.mkdir(), ': is a directory, not an image file'),
        (lambda p: None, ': no such file'),
    ],
    ids=['zero-byte', 'text', 'directory', 'missing'],
)
def test_files_that_are_not_images(tmp_path, make, message):
    path = tmp_path / 'input.png'
    make(path)
    assert _error(path) == f'{path}{message}'


def test_multi_page_tiff_and_animations_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / 'stack.tif', np.zeros((3, 16, 16), np.uint16), photometric='minisblack')
    assert _error(tmp_path / 'stack.tif').endswith(
        ': a TIFF with 3 pages (a stack, pyramid or slide); save the page to use as its own file'
    )
    frames = [Image.new('RGB', (8, 8), colour) for colour in ('red', 'blue')]
    frames[0].save(tmp_path / 'anim.gif', save_all=True, append_images=frames[1:])
    assert _error(tmp_path / 'anim.gif').endswith(': a GIF file with 2 frames; save the frame to use as its own file')


def test_unsupported_layouts_are_refused(tmp_path):
    tifffile.imwrite(
        tmp_path / 'two.tif', np.zeros((16, 16, 2), np.uint8), photometric='minisblack', planarconfig='contig'
    )
    assert 'expected a grey, RGB or RGBA image, got an array of shape (16, 16, 2)' in _error(tmp_path / 'two.tif')
    tifffile.imwrite(tmp_path / 'cmyk.tif', np.zeros((16, 16, 4), np.uint8), photometric='separated')
    assert _error(tmp_path / 'cmyk.tif').endswith(': a SEPARATED TIFF; save it as RGB or grey')


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    png_header_only(tmp_path / 'bomb.png', 20_000, 20_000)
    assert _error(tmp_path / 'bomb.png') == (
        f'{tmp_path / "bomb.png"}: 20,000 x 20,000 = 400,000,000 pixels is above the limit of 100,000,000 '
        '(a guard against decompression bombs); set ZOO_MAX_IMAGE_PIXELS to a larger number to read it'
    )
    Image.fromarray(RGB).save(tmp_path / 'small.png')
    tifffile.imwrite(tmp_path / 'small.tif', RGB)
    for name in ('small.png', 'small.tif'):
        assert 'is above the limit of 1,999' in _error(tmp_path / name, max_pixels=1999)
    monkeypatch.setenv('ZOO_MAX_IMAGE_PIXELS', '1999')
    assert max_image_pixels() == 1999 and 'above the limit of 1,999' in _error(tmp_path / 'small.png')
    monkeypatch.delenv('ZOO_MAX_IMAGE_PIXELS')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)  # Pillow would refuse 2,000 pixels itself; ours applies
    np.testing.assert_array_equal(read_image(tmp_path / 'small.png'), RGB)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    monkeypatch.setenv('ZOO_MAX_IMAGE_PIXELS', 'lots')
    with pytest.raises(ImageReadError, match="ZOO_MAX_IMAGE_PIXELS must be a positive number of pixels, got 'lots'"):
        read_image(tmp_path / 'small.png')


def test_a_pixel_limit_below_one_is_refused(tmp_path):
    Image.new('L', (4, 4)).save(tmp_path / 'x.png')
    with pytest.raises(ImageReadError, match=r'^max_pixels must be a whole number >= 1, got -3$'):
        read_image(tmp_path / 'x.png', max_pixels=-3)
