"""How ``hovernet_postprocess.npz`` was made: HoVer-Net's own post-processing, unmodified, on synthetic inputs.

Run with a checkout of github:vqdang/hover_net@67e2ce5e3f1a64a2ece77ad1c24233653a9e0901 (its ``config.py``
may be a stub; only ``models/hovernet/post_proc.py``, ``models/hovernet/targets.py`` and ``misc/utils.py``
are used)::

    python make_hovernet_postprocess.py /path/to/hover_net hovernet_postprocess.npz

Inputs are random ellipse instance maps turned into HoVer-Net HV targets by the reference
``gen_instance_hv_map``, a blurred NP mask, Gaussian noise of four levels on NP and HV, and per-pixel type
ids that mostly follow the instance (``id % 5``) with random pixels. ``process(pred, nr_types=5)`` gives
the reference instance map and per-nucleus records; the records are stored as arrays by instance id.
"""

import sys

import numpy as np
from scipy import ndimage


def main(reference_repo: str, out_path: str) -> None:
    sys.path.insert(0, reference_repo)
    from models.hovernet.post_proc import process
    from models.hovernet.targets import gen_instance_hv_map

    rng = np.random.default_rng(20261126)
    arrays, names = {}, []
    for case in range(6):
        height, width = (int(v) for v in rng.integers(64, 81, 2))
        rows, cols = np.mgrid[:height, :width]
        ann = np.zeros((height, width), np.int32)
        for inst_id in range(1, int(rng.integers(10, 30))):
            centre, radii, angle = rng.uniform(0, [height, width]), rng.uniform(4, 11, 2), rng.uniform(0, np.pi)
            y, x = rows - centre[0], cols - centre[1]
            u = (x * np.cos(angle) + y * np.sin(angle)) / radii[0]
            v = (-x * np.sin(angle) + y * np.cos(angle)) / radii[1]
            ann[u * u + v * v <= 1] = inst_id
        hv = gen_instance_hv_map(ann.copy(), (height, width)).astype(np.float32)
        noise = [0.0, 0.05, 0.15, 0.3][case % 4]
        np_prob = ndimage.gaussian_filter((ann > 0).astype(np.float32), 1.0) + rng.normal(0, noise * 0.5, ann.shape)
        np_prob = np.clip(np_prob, 0, 1).astype(np.float32)
        hv = (hv + rng.normal(0, noise, hv.shape)).astype(np.float32)
        random_type = rng.random(ann.shape) < 0.3 + noise
        tp_map = np.where(random_type, rng.integers(0, 5, ann.shape), ann % 5).astype(np.uint8)
        inst, info = process(np.dstack([tp_map.astype(np.float32), np_prob, hv]), nr_types=5)
        name = f'p{case}'
        names.append(name)
        ids = np.array(sorted(info), dtype=np.int64)
        arrays.update(
            {
                f'{name}_np_prob': np_prob,
                f'{name}_hv': hv.transpose(2, 0, 1).copy(),
                f'{name}_tp_map': tp_map,
                f'{name}_inst': inst.astype(np.int32),
                f'{name}_ids': ids,
                f'{name}_bbox': np.array([info[i]['bbox'] for i in ids]).reshape(-1, 2, 2),
                f'{name}_centroid': np.array([info[i]['centroid'] for i in ids]).reshape(-1, 2),
                f'{name}_type': np.array([info[i]['type'] for i in ids], dtype=np.int64),
                f'{name}_type_prob': np.array([info[i]['type_prob'] for i in ids], dtype=np.float64),
                f'{name}_contour_len': np.array([len(info[i]['contour']) for i in ids], dtype=np.int64),
                f'{name}_contour': np.concatenate([info[i]['contour'] for i in ids]).astype(np.int32).reshape(-1, 2),
            }
        )
    np.savez_compressed(out_path, names=np.array(names), **arrays)


if __name__ == '__main__':
    main(*sys.argv[1:])
