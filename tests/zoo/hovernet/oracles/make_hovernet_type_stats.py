"""How ``hovernet_type_stats.npz`` / ``.json`` were made: HoVer-Net's ``compute_stats.run_nuclei_type_stat``,
unmodified, on synthetic instance and type maps.

Run with a checkout of github:vqdang/hover_net@67e2ce5e3f1a64a2ece77ad1c24233653a9e0901 (only ``compute_stats.py``
and ``metrics/stats_utils.py`` are used), from the zoo's checkout (for ``zoo.hovernet.instance_info``)::

    cd tests/zoo/hovernet/oracles
    PYTHONPATH=../../../.. python make_hovernet_type_stats.py /path/to/hover_net .

Each case is a few images: ground-truth ellipse nuclei with random types, and a prediction made from them by
moving nuclei (some farther than the 12 px pairing radius), changing types, dropping and adding nuclei; some
images have no predicted or no true nucleus. Each map's nuclei are written as HoVer-Net's ``.mat`` files
(``inst_centroid`` N x 2, ``inst_type`` N x 1) with the centroid and majority type that
``zoo.hovernet.instance_info`` gives (checked against HoVer-Net's ``process()`` in ``hovernet_postprocess.npz``),
and ``run_nuclei_type_stat(pred_dir, true_dir, type_uid_list=[1, .., num_types - 1])`` scores them. It prints its
results with 5 decimals; the full-precision array it prints is recorded instead (its ``print`` is replaced, not
its code). pandas, imported but unused by ``compute_stats.py``, is stubbed.
"""

import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import scipy.io

from zoo.hovernet import instance_info


def ellipses(rng, shape, count, max_types):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    inst, kind = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    for inst_id in range(1, count + 1):
        centre, radii, angle = rng.uniform(4, np.array(shape) - 4), rng.uniform(3, 7, 2), rng.uniform(0, np.pi)
        y, x = rows - centre[0], cols - centre[1]
        u = (x * np.cos(angle) + y * np.sin(angle)) / radii[0]
        v = (-x * np.sin(angle) + y * np.cos(angle)) / radii[1]
        inside = u * u + v * v <= 1
        inst[inside], kind[inside] = inst_id, rng.integers(1, max_types)
    return inst, kind


def predicted(rng, inst, kind, max_types):
    """Move each true nucleus by 0-16 px, change a third of the types, drop and add a few."""
    pred, pred_kind = np.zeros_like(inst), np.zeros_like(kind)
    for inst_id in np.unique(inst)[1:]:
        if rng.random() < 0.15:
            continue  # missed
        dy, dx = rng.integers(-16, 17, 2) if rng.random() < 0.3 else rng.integers(-3, 4, 2)
        mask = np.roll(inst == inst_id, (dy, dx), axis=(0, 1))
        true_type = kind[inst == inst_id][0]
        pred[mask] = inst_id
        pred_kind[mask] = rng.integers(1, max_types) if rng.random() < 0.33 else true_type
    extra, extra_kind = ellipses(rng, inst.shape, int(rng.integers(0, 3)), max_types)
    pred = np.where(extra > 0, extra + pred.max(), pred)
    pred_kind = np.where(extra > 0, extra_kind, pred_kind)
    return pred, pred_kind


def write_mat(path, inst, kind):
    info = instance_info(inst, kind)
    centroids = np.array([record['centroid'] for record in info.values()], np.float64).reshape(-1, 2)
    inst_types = np.array([record['type'] for record in info.values()], np.int64).reshape(-1, 1)
    scipy.io.savemat(path, {'inst_centroid': centroids, 'inst_type': inst_types})


CASES = [  # name, number of images, nuclei per image, num_types (background included), images left empty
    ('three_images', 3, 10, 5, ()),
    ('empty_prediction_and_truth', 3, 8, 5, (('pred', 1), ('true', 2))),
    ('crowded', 2, 30, 5, ()),
    ('type_only_predicted', 2, 12, 6, ()),
    ('one_image', 1, 15, 7, ()),
]


def main(reference_repo: str, out_dir: str) -> None:
    sys.path.insert(0, reference_repo)
    sys.modules.setdefault('pandas', types.ModuleType('pandas'))  # imported, never used
    import compute_stats

    printed = []
    compute_stats.print = lambda *args, **kwargs: printed.append(args[0])
    rng = np.random.default_rng(20261207)
    arrays, cases = {}, []
    for name, count, nuclei, num_types, empty in CASES:
        with tempfile.TemporaryDirectory() as scratch:
            true_dir, pred_dir = Path(scratch) / 'true', Path(scratch) / 'pred'
            true_dir.mkdir(), pred_dir.mkdir()
            for index in range(count):
                # 'type_only_predicted': the last type appears in predictions only
                true_types = num_types - 1 if name == 'type_only_predicted' else num_types
                inst, kind = ellipses(rng, (72, 80), nuclei, true_types)
                pred, pred_kind = predicted(rng, inst, kind, num_types)
                if ('pred', index) in empty:
                    pred[:], pred_kind[:] = 0, 0
                if ('true', index) in empty:
                    inst[:], kind[:] = 0, 0
                key = f'{name}_{index}'
                arrays.update({f'{key}_true': inst, f'{key}_true_type': kind})
                arrays.update({f'{key}_pred': pred, f'{key}_pred_type': pred_kind})
                write_mat(true_dir / f'{key}.mat', inst, kind)
                write_mat(pred_dir / f'{key}.mat', pred, pred_kind)
            printed.clear()
            type_ids = list(range(1, num_types))
            compute_stats.run_nuclei_type_stat(f'{pred_dir}/', str(true_dir), type_uid_list=type_ids)
            (results,) = printed
            expected = dict(zip(['f_d', 'acc'] + [f'f_c_{t}' for t in type_ids], results.tolist(), strict=True))
            cases.append({'id': name, 'images': count, 'num_types': num_types, 'expected': expected})
    out = Path(out_dir)
    np.savez_compressed(out / 'hovernet_type_stats.npz', **arrays)
    reference = 'github:vqdang/hover_net@67e2ce5e3f1a64a2ece77ad1c24233653a9e0901'
    text = json.dumps({'reference': reference, 'cases': cases}, indent=1)
    (out / 'hovernet_type_stats.json').write_text(text.replace('NaN', '"nan"') + '\n')


if __name__ == '__main__':
    main(*sys.argv[1:])
