"""``zoo segment-slide``: nuclei of a whole slide as GeoJSON for QuPath, a CSV and an optional label image;
``zoo segment-slides``: the same for a cohort, in one process, under torchrun or as a SLURM job array;
``zoo cohort-summary``: a cohort folder's table, remade from its slide records."""

from __future__ import annotations

from pathlib import Path

from .backend import add_backend_options, one_line_messages
from .options import output_folder, positive_number, whole_number


def add_commands(sub) -> None:
    p = sub.add_parser(
        'segment-slide',
        help='segment the nuclei of a whole slide (SVS, NDPI, MRXS, TIFF, OME-TIFF) into GeoJSON for QuPath and a CSV',
    )
    p.add_argument('name', help="segmentation model with published weights, e.g. 'mrl_seg_nano.stardist'")
    p.add_argument('slide', type=Path)
    add_slide_options(p)
    p.set_defaults(func=cmd_segment_slide)

    p = sub.add_parser(
        'segment-slides',
        help='segment a cohort of slides, resumably, in one process, under torchrun or as a SLURM job array',
    )
    p.add_argument('name', help="segmentation model with published weights, e.g. 'mrl_seg_nano.stardist'")
    p.add_argument(
        'slides', nargs='+', type=Path, help='slide files, folders of slides, or lists of slides (.txt, .csv)'
    )
    add_slide_options(p)
    p.set_defaults(func=cmd_segment_slides)

    p = sub.add_parser('cohort-summary', help="write a cohort folder's table (cohort.csv) from its slide records")
    p.add_argument('out', type=Path, help='the output folder of zoo segment-slides')
    p.set_defaults(func=cmd_cohort_summary)


def add_slide_options(p) -> None:
    """The options of segment_slide, shared by ``segment-slide`` and ``segment-slides``."""
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
    add_backend_options(p)
    p.add_argument('--no-progress', action='store_true', help='no progress bar')


def _fail(message: str) -> None:
    from zoo.slide import SlideError

    raise SlideError(message)  # one line and exit 2, as every user error (training.cli.main)


def slide_options(args) -> dict:
    """segment_slide's keyword arguments from the options of :func:`add_slide_options` (their ranges are
    checked by the option types here and by segment_slide itself)."""
    return dict(
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


def cmd_segment_slide(args) -> None:
    from zoo.slide import SlideWarning, segment_slide

    with one_line_messages('segment-slide', SlideWarning):
        result = segment_slide(args.name, args.slide, args.out, **slide_options(args))
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


def cmd_segment_slides(args) -> None:
    from zoo.slide import SlideWarning, segment_slides

    with one_line_messages('segment-slides', SlideWarning):  # each slide's warnings, also where a cohort repeats one
        result = segment_slides(args.name, args.slides, args.out, **slide_options(args))
    index, count = result.shard
    failed = sum(record['status'] != 'finished' for record in result.records)
    mine = (
        f'{len(result.share)} slides ({len(result.skipped)} finished before, '
        f'{len(result.records) - failed} now, {failed} failed)'
    )
    if result.summary is None:
        print(f'worker {index} of {count}: {mine}; the worker that records the last slide writes the cohort table')
        return
    _report_cohort(result.summary, result.summary_rows, mine if count > 1 else None)


def _report_cohort(summary: Path, rows: list[dict], worker: str | None = None) -> None:
    """The cohort's outcome: exit 0 when every slide finished, 2 when some failed on their input, 1 on a bug."""
    failed = [row for row in rows if row['status'] == 'failed']
    bugs = [row for row in rows if row['status'] == 'error']
    print(
        (f'this worker: {worker}; ' if worker else '')
        + f'cohort: {len(rows)} slides, {len(rows) - len(failed) - len(bugs)} finished, '
        f'{len(failed) + len(bugs)} failed; wrote {summary}'
    )
    if bugs:
        raise RuntimeError(f'{_names(bugs)} failed on a bug in the zoo (tracebacks in the log above); please report it')
    if failed:
        _fail(f'{_names(failed)} failed (reasons in {summary}); fix them and run zoo segment-slides again')


def _names(rows: list[dict], shown: int = 5) -> str:
    names = [Path(row['slide']).name for row in rows]
    more = f' and {len(names) - shown} more' if len(names) > shown else ''
    return f'{len(names)} slide{"s" if len(names) > 1 else ""} ({", ".join(names[:shown])}{more})'


def cmd_cohort_summary(args) -> None:
    from zoo.slide import write_cohort_summary

    _report_cohort(*write_cohort_summary(args.out))
