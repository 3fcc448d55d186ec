"""``zoo segment-slide``: nuclei of a whole slide as GeoJSON for QuPath, a CSV and an optional label image."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from .options import output_folder, positive_number, whole_number


def add_commands(sub) -> None:
    p = sub.add_parser(
        'segment-slide',
        help='segment the nuclei of a whole slide (SVS, NDPI, MRXS, TIFF, OME-TIFF) into GeoJSON for QuPath and a CSV',
    )
    p.add_argument('name', help="segmentation model with published weights, e.g. 'mrl_seg_nano.stardist'")
    p.add_argument('slide', type=Path)
    p.add_argument('--out', type=output_folder, default='slides', help='output folder (default: slides)')
    p.add_argument(
        '--mpp',
        type=positive_number,
        help="microns per pixel to run the model at (default: the model's; level 0 as it is when unknown)",
    )
    p.add_argument(
        '--slide-mpp', type=positive_number, help="microns per pixel of the slide's level 0, overriding the file's"
    )
    # Bounds that need the library (a tile of at least 32 px, at most 64 workers...) are its checks, with the same
    # one-line errors: importing it here would slow every command's start.
    p.add_argument('--tile', type=whole_number(1), default=256, help='network tile side in pixels (default: 256)')
    p.add_argument(
        '--overlap',
        type=whole_number(0),
        default=64,
        help='pixels neighbouring tiles share, <= half a tile (default: 64)',
    )
    p.add_argument('--batch-size', type=whole_number(1), default=8, help='tiles per forward pass (default: 8)')
    p.add_argument('--workers', type=whole_number(0), default=2, help='threads reading and decoding tiles (default: 2)')
    p.add_argument('--all-tiles', action='store_true', help='process every tile, not only those with tissue')
    p.add_argument('--label-image', action='store_true', help='also write a pyramidal OME-TIFF of nucleus ids')
    p.add_argument('--device', help="where to run, e.g. 'cuda' (default: cpu)")
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.set_defaults(func=cmd_segment_slide)


def cmd_segment_slide(args) -> None:
    from zoo.slide import SlideWarning, segment_slide

    def show_warning(message, *_args, **_kwargs):
        print(f'zoo segment-slide: warning: {message}', file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        warnings.simplefilter('always', SlideWarning)
        result = segment_slide(
            args.name,
            args.slide,
            args.out,
            mpp=args.mpp,
            slide_mpp=args.slide_mpp,
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            workers=args.workers,
            detect_tissue=not args.all_tiles,
            label_image=args.label_image,
            device=args.device,
            progress=not args.no_progress,
        )
    res, t = result.resolution, result.timings
    mpp = f'{res.mpp:.3g} µm/px' if res.mpp else 'unknown µm/px'
    print(
        f'{args.slide}: {result.num_nuclei} nuclei from {result.tissue_tiles} of {result.tiles} tiles '
        f'({result.tiles_run} run now, {result.tissue_tiles - result.tiles_run} resumed; '
        f'{result.duplicates} duplicates at tile overlaps removed) at level {res.level}, {mpp}'
    )
    print(
        f'  {result.megapixels / t.total:.2f} MP/s; read {t.read:.1f} s, network {t.network:.1f} s, '
        f'post-processing {t.postprocess:.1f} s, merge {t.merge:.1f} s, writing {t.write:.1f} s, total {t.total:.1f} s'
    )
    outputs = [result.geojson, result.csv] + ([result.label_image] if result.label_image else [])
    print('  wrote ' + ', '.join(str(p) for p in outputs))
