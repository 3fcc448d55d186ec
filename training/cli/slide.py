"""``zoo segment-slide``: nuclei of a whole slide as GeoJSON for QuPath, a CSV and an optional label image."""

from __future__ import annotations

from pathlib import Path

from .backend import add_backend_options, one_line_messages


def add_commands(sub) -> None:
    p = sub.add_parser(
        'segment-slide',
        help='segment the nuclei of a whole slide (SVS, NDPI, MRXS, TIFF, OME-TIFF) into GeoJSON for QuPath and a CSV',
    )
    p.add_argument('name', help="segmentation model with published weights, e.g. 'mrl_seg_nano.stardist'")
    p.add_argument('slide', type=Path)
    p.add_argument('--out', type=Path, default=Path('slides'), help='output folder (default: slides)')
    p.add_argument(
        '--mpp',
        type=float,
        help="microns per pixel to run the model at (default: the model's; level 0 as it is when unknown)",
    )
    p.add_argument('--slide-mpp', type=float, help="microns per pixel of the slide's level 0, overriding the file's")
    p.add_argument('--tile', type=int, default=256, help='network tile side in pixels (default: 256)')
    p.add_argument('--overlap', type=int, default=64, help='pixels neighbouring tiles share (default: 64)')
    p.add_argument('--batch-size', type=int, default=8, help='tiles per forward pass (default: 8)')
    p.add_argument('--workers', type=int, default=2, help='threads reading and decoding tiles (default: 2)')
    p.add_argument('--all-tiles', action='store_true', help='process every tile, not only those with tissue')
    p.add_argument('--label-image', action='store_true', help='also write a pyramidal OME-TIFF of nucleus ids')
    p.add_argument('--device', help="where to run, e.g. 'cuda' (default: cpu)")
    add_backend_options(p)
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.set_defaults(func=cmd_segment_slide)


def _fail(message: str) -> None:
    from zoo.slide import SlideError

    raise SlideError(message)  # one line and exit 2, as every user error (training.cli.main)


def cmd_segment_slide(args) -> None:
    from zoo.slide import SlideWarning, segment_slide

    for name in ('tile', 'batch_size'):
        if getattr(args, name) < 1:
            _fail(f'--{name.replace("_", "-")} must be at least 1')
    if not 0 <= args.overlap < args.tile:
        _fail(f'--overlap must be at least 0 and smaller than --tile ({args.tile}), got {args.overlap}')
    for name in ('mpp', 'slide_mpp'):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            _fail(f'--{name.replace("_", "-")} must be positive')

    with one_line_messages('segment-slide', SlideWarning):
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
            backend=args.backend,
            precision=args.precision,
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
