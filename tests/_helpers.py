"""Shared by several test modules."""

import struct
import zlib

import zoo
from training.callbacks import Callback


class Killed(Exception):
    """Raised by ``KillAt``; stands in for the process being killed."""


class KillAt(Callback):
    """Stops a run in the middle of an epoch, after its last checkpoint, like SIGKILL would."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step = epoch, step

    def on_step_end(self, trainer, epoch, step):
        if (epoch, step) == (self.epoch, self.step):
            raise Killed


MODELS = zoo.list_models()  # every registered architecture
CLASSIFIERS = [n for n in MODELS if zoo.model_task(n) == 'image-classification']
SEGMENTERS = [n for n in MODELS if zoo.model_task(n) == 'nuclei-segmentation']  # their own tests: test_seg_models.py
# Factorized variants: the same architectures at Pufferfish's uniform rank ratio 1/4 (the largest member
# of each family only in its dense form: factorization is the same code, and CI has two cores).
LOW_RANK = [n for n in CLASSIFIERS if n.startswith('cf_') and n not in ('cf_deit_base', 'cf_wide_resnet50_2')]
CASES = [(n, {}) for n in CLASSIFIERS] + [(n, dict(rank_ratio=0.25)) for n in LOW_RANK]
CASE_IDS = [n + ('-lowrank' if kw else '') for n, kw in CASES]
# Every registered model, the classifiers also factorized: what timm's model contract is tested over.
# hovernet_original is hovernet_fast's code in the paper's other mode at 2.5x the compute (its keys, parameter
# counts and outputs are the reference's: test_seg_models.py).
CONTRACT_SEGMENTERS = [n for n in SEGMENTERS if n != 'hovernet_original']
ALL_CASES = CASES + [(n, {}) for n in CONTRACT_SEGMENTERS]
ALL_CASE_IDS = CASE_IDS + CONTRACT_SEGMENTERS


def input_size(model, cap):
    c, h, w = model.pretrained_cfg['input_size']
    if model.pretrained_cfg.get('fixed_input_size'):
        return c, h, w
    return c, min(h, cap), min(w, cap)


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` over almost no data: a decompression bomb's header."""

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(
        b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0')) + chunk(b'IEND', b'')
    )
