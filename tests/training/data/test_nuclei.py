"""Nuclei dataset readers, patch extraction, augmentation and the patch dataset."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import tifffile
import torch
from PIL import Image

from training.data import (
    DatasetLayoutError,
    NucleiPatchDataset,
    NucleiSample,
    load_consep,
    load_cpm17,
    load_folder,
    load_kumar,
    load_monuseg,
    load_stardist_sample,
    split_stardist_sample,
)
from zoo.hovernet import (
    extract_patches,
    geometric_transform,
    hovernet_targets,
    patch_origins,
    photometric_transform,
    read_window,
    warp_image_and_labels,
)

HAS_STARDIST = importlib.util.find_spec('stardist') is not None


def random_rgb(seed: int, height: int = 12, width: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def random_labels(seed: int, height: int = 12, width: int = 10, max_id: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, max_id + 1, (height, width)).astype(np.int32)


def write_mat_split(root: Path, split: str, stem: str, suffix: str, image: np.ndarray, **labels: np.ndarray) -> None:
    (root / split / 'Images').mkdir(parents=True, exist_ok=True)
    (root / split / 'Labels').mkdir(parents=True, exist_ok=True)
    image_path = root / split / 'Images' / f'{stem}{suffix}'
    if suffix == '.tif':
        tifffile.imwrite(image_path, image)
    else:
        Image.fromarray(image).save(image_path)
    scipy.io.savemat(root / split / 'Labels' / f'{stem}.mat', labels)


# ---------------------------------------------------------------------------------------------
# Readers


def test_load_kumar_splits(tmp_path: Path) -> None:
    written = {}
    for seed, (split, stem) in enumerate([('train', 'A'), ('train', 'B'), ('test_same', 'C'), ('test_diff', 'D')]):
        written[stem] = (random_rgb(seed), random_labels(seed))
        write_mat_split(tmp_path, split, stem, '.tif', written[stem][0], inst_map=written[stem][1])
    train = load_kumar(tmp_path, 'train')
    test = load_kumar(tmp_path, 'test')
    assert [s.name for s in train] == ['A', 'B']
    assert [s.name for s in test] == ['C', 'D']  # test_same, then test_diff
    assert [s.name for s in load_kumar(tmp_path, 'test_diff')] == ['D']
    for sample in train + test:
        np.testing.assert_array_equal(sample.image, written[sample.name][0])
        np.testing.assert_array_equal(sample.inst_map, written[sample.name][1])
        assert sample.inst_map.dtype == np.int32 and sample.type_map is None


def test_load_monuseg_rasterises_polygons(tmp_path: Path) -> None:
    image = random_rgb(0, 8, 8)
    (tmp_path / 'Tissue Images').mkdir()
    (tmp_path / 'Annotations').mkdir()
    tifffile.imwrite(tmp_path / 'Tissue Images' / 'TCGA-X.tif', image)
    # Two rectangles; the second overlaps the first and, being later, wins the shared pixels.
    square = [(1, 1), (4, 1), (4, 3), (1, 3)]  # (X, Y): columns 1-4, rows 1-3
    tall = [(4, 2), (6, 2), (6, 6), (4, 6)]  # columns 4-6, rows 2-6
    regions = ''.join(
        f'<Region Id="{index}"><Vertices>'
        + ''.join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
        + '</Vertices></Region>'
        for index, vertices in enumerate([square, tall], start=1)
    )
    xml = f'<Annotations><Annotation Id="1"><Regions>{regions}</Regions></Annotation></Annotations>'
    (tmp_path / 'Annotations' / 'TCGA-X.xml').write_text(xml)

    (sample,) = load_monuseg(tmp_path)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 2, 2, 2, 0],
            [0, 1, 1, 1, 2, 2, 2, 0],
            [0, 0, 0, 0, 2, 2, 2, 0],
            [0, 0, 0, 0, 2, 2, 2, 0],
            [0, 0, 0, 0, 2, 2, 2, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    assert sample.name == 'TCGA-X'
    np.testing.assert_array_equal(sample.image, image)
    np.testing.assert_array_equal(sample.inst_map, expected)


def test_load_consep_merges_types(tmp_path: Path) -> None:
    rgba = np.dstack([random_rgb(1), np.full((12, 10), 255, np.uint8)])  # CoNSeP PNGs may carry alpha
    inst_map = random_labels(1).astype(np.float64)  # the released .mat files store doubles
    type_map = np.tile(np.arange(8), 15)[:120].reshape(12, 10).astype(np.float64)
    write_mat_split(tmp_path, 'Train', 'train_1', '.png', rgba, inst_map=inst_map, type_map=type_map)

    (merged,) = load_consep(tmp_path, 'train')
    (original,) = load_consep(tmp_path, 'train', merge_types=False)
    np.testing.assert_array_equal(merged.image, rgba[..., :3])
    np.testing.assert_array_equal(merged.inst_map, inst_map)
    np.testing.assert_array_equal(original.type_map, type_map)
    np.testing.assert_array_equal(merged.type_map, np.array([0, 1, 2, 3, 3, 4, 4, 4])[type_map.astype(int)])
    assert merged.type_map.dtype == np.int32 and merged.type_map.max() == 4


def test_load_cpm17_grey_png(tmp_path: Path) -> None:
    grey = random_rgb(2)[..., 0]
    labels = random_labels(2)
    write_mat_split(tmp_path, 'test', 'image_01', '.png', grey, inst_map=labels)
    (sample,) = load_cpm17(tmp_path, 'test')
    np.testing.assert_array_equal(sample.image, np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(sample.inst_map, labels)


def write_folder_sample(folder: Path, stem: str, seed: int, with_types: bool) -> NucleiSample:
    image, inst_map, type_map = random_rgb(seed), random_labels(seed, max_id=300), random_labels(seed + 1, max_id=3)
    for name in ('images', 'labels') + (('types',) if with_types else ()):
        (folder / name).mkdir(parents=True, exist_ok=True)
    if seed % 2:
        Image.fromarray(image).save(folder / 'images' / f'{stem}.png')
        Image.fromarray(inst_map.astype(np.uint16)).save(folder / 'labels' / f'{stem}.png')  # 16-bit PNG
    else:
        tifffile.imwrite(folder / 'images' / f'{stem}.tif', image)
        np.save(folder / 'labels' / f'{stem}.npy', inst_map)
    if with_types:
        tifffile.imwrite(folder / 'types' / f'{stem}.tif', type_map.astype(np.uint8))
    return NucleiSample(stem, image, inst_map, type_map if with_types else None)


def assert_same_samples(loaded: list[NucleiSample], expected: list[NucleiSample]) -> None:
    assert [s.name for s in loaded] == [s.name for s in expected]
    for got, want in zip(loaded, expected):
        np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_array_equal(got.inst_map, want.inst_map)
        if want.type_map is None:
            assert got.type_map is None
        else:
            np.testing.assert_array_equal(got.type_map, want.type_map)


def test_load_folder_flat_with_fraction_split(tmp_path: Path) -> None:
    written = [write_folder_sample(tmp_path, f'img{index}', index, with_types=True) for index in range(5)]
    assert_same_samples(load_folder(tmp_path), written)
    train, val = load_folder(tmp_path, 'train'), load_folder(tmp_path, 'val')
    assert len(val) == 1 and len(train) == 4  # round(0.2 * 5)
    assert sorted(s.name for s in train + val) == [s.name for s in written]
    assert [s.name for s in load_folder(tmp_path, 'val')] == [s.name for s in val]  # deterministic


def test_load_folder_presplit(tmp_path: Path) -> None:
    train = [write_folder_sample(tmp_path / 'train', 'a', 1, with_types=False)]
    val = [write_folder_sample(tmp_path / 'val', 'b', 2, with_types=False)]
    assert_same_samples(load_folder(tmp_path, 'train'), train)
    assert_same_samples(load_folder(tmp_path, 'val'), val)
    assert_same_samples(load_folder(tmp_path), train + val)


def test_compressed_tiffs(tmp_path: Path) -> None:
    # cv2.imwrite writes LZW by default; tifffile needs imagecodecs for it (and for most other codecs).
    image, labels = random_rgb(6, 20, 24), random_labels(6, 20, 24, max_id=40)
    write_mat_split(tmp_path, 'train', 'A', '.tif', image, inst_map=labels)
    assert cv2.imwrite(str(tmp_path / 'train' / 'Images' / 'A.tif'), image[..., ::-1])  # BGR on disk
    assert tifffile.TiffFile(tmp_path / 'train' / 'Images' / 'A.tif').pages[0].compression == 5  # LZW
    (sample,) = load_kumar(tmp_path)
    np.testing.assert_array_equal(sample.image, image)
    for compression in ('lzw', 'zlib', 'zstd', 'lzma', 'packbits'):
        folder = tmp_path / compression
        for name in ('images', 'labels'):
            (folder / name).mkdir(parents=True)
        tifffile.imwrite(folder / 'images' / 'a.tif', image, compression=compression)
        tifffile.imwrite(folder / 'labels' / 'a.tif', labels.astype(np.uint16), compression=compression)
        (sample,) = load_folder(folder)
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.inst_map, labels)


def test_extensions_in_any_case(tmp_path: Path) -> None:
    image, labels = random_rgb(7), random_labels(7)
    kumar = tmp_path / 'kumar'
    write_mat_split(kumar, 'train', 'A', '.TIF', image, inst_map=labels)
    (kumar / 'train' / 'Labels' / 'A.mat').rename(kumar / 'train' / 'Labels' / 'A.MAT')
    (sample,) = load_kumar(kumar)
    assert sample.name == 'A'
    np.testing.assert_array_equal(sample.image, image)
    np.testing.assert_array_equal(sample.inst_map, labels)

    consep = tmp_path / 'consep'
    write_mat_split(consep, 'Test', 'test_1', '.Png', image, inst_map=labels, type_map=labels % 8)
    assert [s.name for s in load_consep(consep, 'test')] == ['test_1']

    folder = tmp_path / 'folder'
    for name in ('images', 'labels'):
        (folder / name).mkdir(parents=True)
    Image.fromarray(image).save(folder / 'images' / 'a.JPEG', format='PNG')  # the content decides, not the name
    with open(folder / 'labels' / 'a.NPY', 'wb') as file:  # np.save would append '.npy' to the name
        np.save(file, labels)
    (sample,) = load_folder(folder)
    np.testing.assert_array_equal(sample.inst_map, labels)

    (folder / 'images' / '.a.png').write_bytes(b'resource fork')  # hidden files are ignored
    assert [s.name for s in load_folder(folder)] == ['a']
    Image.fromarray(image).save(folder / 'images' / 'a.png')  # a second image with the same stem
    with pytest.raises(DatasetLayoutError, match=r"several files for 'a' in .*images"):
        load_folder(folder)


# ---------------------------------------------------------------------------------------------
# Layout errors name the path and show the expected layout


def test_missing_labels_dir(tmp_path: Path) -> None:
    write_mat_split(tmp_path, 'train', 'A', '.tif', random_rgb(0), inst_map=random_labels(0))
    (tmp_path / 'train' / 'Labels' / 'A.mat').unlink()
    (tmp_path / 'train' / 'Labels').rmdir()
    with pytest.raises(DatasetLayoutError) as error:
        load_kumar(tmp_path, 'train')
    assert str(tmp_path / 'train' / 'Labels') in str(error.value)
    assert 'ROOT/{train,test_same,test_diff}/Images/*.tif with matching ROOT/<split>/Labels/*.mat' in str(error.value)


def test_missing_mat_for_image(tmp_path: Path) -> None:
    labels = random_labels(0)
    write_mat_split(tmp_path, 'Test', 'test_1', '.png', random_rgb(0), inst_map=labels, type_map=labels)
    Image.fromarray(random_rgb(1)).save(tmp_path / 'Test' / 'Images' / 'test_2.png')
    with pytest.raises(DatasetLayoutError) as error:
        load_consep(tmp_path, 'test')
    message = str(error.value)
    assert str(tmp_path / 'Test' / 'Labels' / 'test_2.mat') in message
    assert str(tmp_path / 'Test' / 'Images' / 'test_2.png') in message
    assert 'ROOT/{Train,Test}/Images/*.png with matching ROOT/<split>/Labels/*.mat' in message


def test_missing_key(tmp_path: Path) -> None:
    write_mat_split(tmp_path, 'train', 'image_01', '.png', random_rgb(0), instances=random_labels(0))
    with pytest.raises(DatasetLayoutError) as error:
        load_cpm17(tmp_path, 'train')
    assert str(tmp_path / 'train' / 'Labels' / 'image_01.mat') in str(error.value)
    assert "'inst_map'" in str(error.value)


def test_shape_mismatch_names_both_files(tmp_path: Path) -> None:
    write_mat_split(tmp_path, 'train', 'A', '.tif', random_rgb(0), inst_map=random_labels(0, height=11))
    with pytest.raises(DatasetLayoutError) as error:
        load_kumar(tmp_path)
    assert str(tmp_path / 'train' / 'Labels' / 'A.mat') in str(error.value)
    assert str(tmp_path / 'train' / 'Images' / 'A.tif') in str(error.value)


def test_folder_missing_label(tmp_path: Path) -> None:
    write_folder_sample(tmp_path, 'a', 1, with_types=False)
    (tmp_path / 'labels' / 'a.png').unlink()
    with pytest.raises(DatasetLayoutError) as error:
        load_folder(tmp_path)
    assert str(tmp_path / 'labels' / 'a') in str(error.value)
    assert 'ROOT/images/<stem>' in str(error.value) and 'ROOT/labels/<stem>' in str(error.value)


@pytest.mark.parametrize(
    'ids, message',
    [
        (np.full((8, 8), 2**32 - 1, np.uint32), 'at most 2,147,483,647 (int32 ids), found 4.29497e+09'),
        (np.full((8, 8), 1e20), 'at most 2,147,483,647 (int32 ids), found 1e+20'),
        (np.full((8, 8), -3, np.int64), 'must be >= 0, found -3'),
    ],
)
def test_instance_ids_that_do_not_fit_int32_are_refused_not_wrapped(tmp_path: Path, ids, message) -> None:
    write_folder_sample(tmp_path, 'a', 2, with_types=False)
    np.save(tmp_path / 'labels' / 'a.npy', np.broadcast_to(ids[:1, :1], (12, 10)))
    with pytest.raises(DatasetLayoutError, match=re.escape(f'{tmp_path / "labels" / "a.npy"}: ')) as error:
        load_folder(tmp_path)
    assert message in str(error.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match='Tissue Images'):
        load_monuseg(tmp_path / 'nowhere')


# ---------------------------------------------------------------------------------------------
# Patch extraction


@pytest.mark.parametrize(('height', 'width', 'window', 'step'), [(37, 53, 16, 6), (20, 20, 12, 4), (5, 7, 12, 4)])
def test_extract_patches_mirror_padding_tiles_the_image(height: int, width: int, window: int, step: int) -> None:
    image = random_rgb(3, height, width)
    patches = extract_patches(image, window, step)
    origins = patch_origins(height, width, window, step)
    margin = (window - step) // 2
    padded = np.pad(image, ((100, 100), (100, 100), (0, 0)), mode='reflect')
    stitched = np.zeros_like(image)
    for patch, (top, left) in zip(patches, origins, strict=True):
        # every window is the mirror-padded image at its corner...
        np.testing.assert_array_equal(patch, padded[top + 100 : top + 100 + window, left + 100 : left + 100 + window])
        # ...and the central step x step regions tile the image
        center = patch[margin : margin + step, margin : margin + step]
        rows = slice(top + margin, min(top + margin + step, height))
        cols = slice(left + margin, min(left + margin + step, width))
        stitched[rows, cols] = center[: rows.stop - rows.start, : cols.stop - cols.start]
    np.testing.assert_array_equal(stitched, image)


def test_extract_patches_hovernet_grid() -> None:
    # HoVer-Net on a 1000 px Kumar tile: 540 windows, step 164 -> 7 x 7 windows, the last flush.
    origins = patch_origins(1000, 1000, 540, 164)
    tops = sorted({top for top, _ in origins})
    assert len(origins) == 49
    assert tops == [-188, -24, 140, 304, 468, 632, 648]


# ---------------------------------------------------------------------------------------------
# Augmentation


def test_geometric_augmentation_keeps_image_and_masks_aligned() -> None:
    inst_map = np.zeros((64, 64), np.int32)
    rows, cols = np.mgrid[:64, :64]
    for inst_id, (row, col, radius) in enumerate([(20, 20, 9), (40, 44, 12), (12, 50, 6)], start=1):
        inst_map[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = inst_id
    type_map = np.where(inst_map > 0, 4 - inst_map, 0).astype(np.int32)
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = inst_map * 60  # red encodes the id
    transform = geometric_transform()
    for seed in range(20):
        transform.set_random_seed(seed)
        warped_image, warped_labels = warp_image_and_labels(transform, image, np.stack([inst_map, type_map], -1))
        warped_inst, warped_type = warped_labels[..., 0], warped_labels[..., 1]
        assert warped_labels.dtype == np.int32
        np.testing.assert_array_equal(warped_image[..., 0], warped_inst * 60)
        assert set(np.unique(warped_inst)) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(warped_type, np.where(warped_inst > 0, 4 - warped_inst, 0))


def test_blur_kernel_sizes_are_drawn_as_hovernet() -> None:
    # HoVer-Net: Gaussian width and height each randint(0, 3) * 2 + 1, independently; median the same.
    gaussian, median = photometric_transform().transforms[0].transforms[:2]
    gaussian.set_random_seed(0)
    median.set_random_seed(0)
    assert {gaussian.get_params()['ksize'] for _ in range(300)} == {(w, h) for w in (1, 3, 5) for h in (1, 3, 5)}
    assert {median.get_params()['ksize'] for _ in range(100)} == {1, 3, 5}
    image = random_rgb(5, 16, 16)
    expected = cv2.GaussianBlur(image, (5, 1), sigmaX=0, sigmaY=0, borderType=cv2.BORDER_REPLICATE)
    np.testing.assert_array_equal(gaussian.apply(image, ksize=(5, 1)), expected)
    np.testing.assert_array_equal(median.apply(image, ksize=5), cv2.medianBlur(image, 5))
    np.testing.assert_array_equal(median.apply(image, ksize=1), image)


def test_photometric_augmentation_changes_only_the_image() -> None:
    transform = photometric_transform()
    transform.set_random_seed(0)
    image = random_rgb(4, 32, 32)
    out = transform(image=image)['image']
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)


def make_sample(seed: int, size: int = 96) -> NucleiSample:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    inst_map = np.zeros((size, size), np.int32)
    for inst_id in range(1, 16):
        centre, radius = rng.uniform(0, size, 2), rng.uniform(5, 11)
        inst_map[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2] = inst_id
    type_map = np.where(inst_map > 0, inst_map % 3 + 1, 0).astype(np.int32)
    image = np.where(inst_map[..., None] > 0, 60, 220).astype(np.uint8).repeat(3, axis=2)
    return NucleiSample(f'synthetic{seed}', image, inst_map, type_map)


def test_patch_dataset_items() -> None:
    torch.manual_seed(0)
    samples = [make_sample(0), make_sample(1)]
    dataset = NucleiPatchDataset(
        samples, patch_size=48, step=32, augment=True, num_types=4, window_size=64, output_size=32
    )
    assert len(dataset) == 2 * len(patch_origins(96, 96, 64, 32))
    item = dataset[3]
    assert item['image'].shape == (3, 48, 48) and item['image'].dtype == torch.float32
    assert 0.0 <= item['image'].min() and item['image'].max() <= 1.0
    assert item['np'].shape == (32, 32) and item['np'].dtype == torch.int64
    assert item['hv'].shape == (2, 32, 32) and item['hv'].dtype == torch.float32
    assert item['tp'].shape == (32, 32) and item['tp'].dtype == torch.int64
    assert item['inst'].shape == (32, 32) and item['inst'].dtype == torch.int32
    # Targets come from the augmented instance map: NP, HV and TP agree with the returned ids.
    torch.testing.assert_close(item['np'], (item['inst'] > 0).long())
    assert (item['hv'][:, item['np'] == 0] == 0).all()
    assert (item['tp'][item['np'] == 0] == 0).all() and (item['tp'][item['np'] == 1] > 0).all()
    assert item['hv'].abs().max() <= 1.0

    plain = NucleiPatchDataset(samples, patch_size=48, step=32, augment=False)
    assert set(plain[0]) == {'image', 'np', 'hv', 'inst'}
    # Without augmentation an item's targets are hovernet_targets of its window, with either HV centre.
    top, left = patch_origins(96, 96, 48, 32)[0]
    window = read_window(samples[0].inst_map, top, left, 48)
    exact = NucleiPatchDataset(samples, patch_size=48, step=32, augment=False, exact_hv_centre=True)
    for dataset, exact_centre in ((plain, False), (exact, True)):
        expected = hovernet_targets(window, exact_centre=exact_centre)['hv']
        np.testing.assert_array_equal(dataset[0]['hv'].numpy(), expected)
    assert not torch.equal(plain[0]['hv'], exact[0]['hv'])
    with pytest.raises(ValueError, match='type_map'):
        NucleiPatchDataset([NucleiSample('x', samples[0].image, samples[0].inst_map)], 48, 32, False, num_types=4)


# ---------------------------------------------------------------------------------------------
# The real stardist sample (fluorescence DSB2018, not H&E)


@pytest.mark.skipif(not HAS_STARDIST, reason='stardist is not installed (pip install --no-deps stardist)')
def test_stardist_sample_and_tiles() -> None:
    raw_mask = tifffile.imread(Path(importlib.util.find_spec('stardist').origin).parent / 'data/images/mask2d.tif')
    assert raw_mask.max() == 183 and len(np.unique(raw_mask)) - 1 == 125

    sample = load_stardist_sample()
    assert sample.image.shape == (512, 512, 3) and sample.image.dtype == np.uint8
    assert (sample.image[..., 0] == sample.image[..., 2]).all()
    assert sample.image.min() == 0 and sample.image.max() == 255
    assert sample.inst_map.max() == 125 and len(np.unique(sample.inst_map)) == 126

    train, val = split_stardist_sample()
    assert len(train) == 12 and len(val) == 4
    assert all(tile.inst_map.max() > 0 for tile in train + val)
    assert {tile.name.split('_', 2)[-1] for tile in val} == {'r0_c3', 'r1_c2', 'r2_c1', 'r3_c0'}


def mat_v73_header() -> bytes:
    """The first bytes of a MATLAB v7.3 (HDF5) file, which scipy cannot read."""
    return b'MATLAB 7.3 MAT-file'.ljust(116) + bytes(8) + b'\x00\x02IM' + bytes(64)


@pytest.mark.parametrize(
    ('relative_path', 'corrupt', 'message'),
    [
        ('Labels/A.mat', lambda data: b'', 'cannot read the MATLAB file (MatReadError'),
        ('Labels/A.mat', lambda data: np.random.default_rng(0).bytes(300), 'cannot read the MATLAB file (ValueError'),
        ('Labels/A.mat', lambda data: mat_v73_header(), 'v7.3'),
        ('Labels/A.mat', lambda data: data[:200], 'cannot read the MATLAB file'),
        ('Images/A.tif', lambda data: data[:100], 'cannot decode this TIFF'),
    ],
    ids=['empty-mat', 'random-mat', 'v7.3-mat', 'truncated-mat', 'truncated-tif'],
)
def test_corrupt_file_is_named(tmp_path: Path, relative_path: str, corrupt, message: str) -> None:
    write_mat_split(tmp_path, 'train', 'A', '.tif', random_rgb(0, 64, 64), inst_map=random_labels(0, 64, 64))
    path = tmp_path / 'train' / relative_path
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DatasetLayoutError) as raised:
        load_kumar(tmp_path)
    assert str(raised.value).startswith(f'{path}: ') and message in str(raised.value)


def test_mat_label_map_of_the_wrong_kind(tmp_path: Path) -> None:
    write_mat_split(tmp_path, 'train', 'A', '.tif', random_rgb(0), inst_map=np.array(['not', 'a', 'map']))
    with pytest.raises(DatasetLayoutError, match="'inst_map' must"):
        load_kumar(tmp_path)


def test_mat_without_image(tmp_path: Path) -> None:
    write_mat_split(
        tmp_path, 'Train', 'train_1', '.png', random_rgb(0), inst_map=random_labels(0), type_map=random_labels(0)
    )
    scipy.io.savemat(tmp_path / 'Train' / 'Labels' / 'train_2.mat', {'inst_map': random_labels(1)})
    with pytest.raises(DatasetLayoutError) as raised:
        load_consep(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / 'Train' / 'Labels' / 'train_2.mat') in message and 'has no image' in message


def test_folder_label_without_image(tmp_path: Path) -> None:
    write_folder_sample(tmp_path, 'a', 1, with_types=True)
    np.save(tmp_path / 'types' / 'b.npy', random_labels(2))
    with pytest.raises(DatasetLayoutError, match=r'types/b\.npy has no image'):
        load_folder(tmp_path)


@pytest.mark.parametrize('suffix', ['.png', '.tif', '.npy'])
def test_corrupt_images_and_labels_name_the_file(tmp_path: Path, suffix: str) -> None:
    write_folder_sample(tmp_path, 'a', 1, with_types=False)  # a PNG image and a PNG label
    broken = tmp_path / 'labels' / 'a.png'
    broken.unlink()
    broken = broken.with_suffix(suffix)
    broken.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(40) if suffix == '.png' else bytes(40))
    with pytest.raises(DatasetLayoutError, match='cannot read instance map') as raised:
        load_folder(tmp_path)
    assert str(broken) in str(raised.value)

    (tmp_path / 'images' / 'a.png').write_bytes(b'not an image')
    with pytest.raises(DatasetLayoutError, match='not an image file') as raised:
        load_folder(tmp_path)
    assert str(tmp_path / 'images' / 'a.png') in str(raised.value)


def test_invalid_monuseg_xml(tmp_path: Path) -> None:
    (tmp_path / 'Tissue Images').mkdir()
    (tmp_path / 'Annotations').mkdir()
    tifffile.imwrite(tmp_path / 'Tissue Images' / 'X.TIF', random_rgb(0))
    (tmp_path / 'Annotations' / 'X.xml').write_text('<Annotations><Annotation>')
    with pytest.raises(DatasetLayoutError, match='cannot read the XML annotation') as raised:
        load_monuseg(tmp_path)
    assert str(tmp_path / 'Annotations' / 'X.xml') in str(raised.value)
    (tmp_path / 'Annotations' / 'Y.xml').write_text('<Annotations/>')
    with pytest.raises(DatasetLayoutError, match=r'Y\.xml has no image'):
        load_monuseg(tmp_path)
