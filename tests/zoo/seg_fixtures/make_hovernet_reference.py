"""How ``hovernet_reference.safetensors`` and ``hovernet_reference_keys.json`` were made: HoVer-Net's own network.

Run with a checkout of github:vqdang/hover_net@67e2ce5e3f1a64a2ece77ad1c24233653a9e0901 (its ``config.py`` may be
a stub; only ``models/hovernet/net_desc.py``, ``net_utils.py`` and ``utils.py`` are used, unmodified)::

    python tests/zoo/seg_fixtures/make_hovernet_reference.py /path/to/hover_net

For mode 'original' with ``nr_types=5`` (input 198 px, output 8) and mode 'fast' with ``nr_types=6`` (input
104 px, output 12), the reference ``HoVerNet`` gets the weights of ``seeded_init_`` (tests/zoo/test_seg_models.py;
a function of the sorted state-dict keys, which the zoo's ``hovernet_*`` share) and, in eval mode, the input of
``reference_input`` times 255 (the reference divides by 255 inside; the zoo nets take ``[0, 1]``). The file holds
each branch's output as ``<mode>.<branch>``; the JSON lists every state-dict key with its shape.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]  # tests/zoo and tests (as pytest has them)
from test_seg_models import REFERENCE_CASES, reference_input, seeded_init_  # noqa: E402


def main(reference_repo: str) -> None:
    sys.path.insert(0, reference_repo)
    from models.hovernet.net_desc import HoVerNet

    torch.set_num_threads(1)
    outputs, keys = {}, {}
    for mode, num_types, size in REFERENCE_CASES:
        model = seeded_init_(HoVerNet(input_ch=3, nr_types=num_types, mode=mode)).eval()
        keys[mode] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        with torch.no_grad():
            # reference_input is k / 255 for integers k: the reference divides k by 255 to the same float32 bits
            for branch, value in model((reference_input(size) * 255).round()).items():
                outputs[f'{mode}.{branch}'] = value.contiguous()
    save_file(outputs, str(HERE / 'hovernet_reference.safetensors'))
    modes = [
        f'{json.dumps(mode)}: [\n' + ',\n'.join(map(json.dumps, entries)) + '\n]' for mode, entries in keys.items()
    ]
    (HERE / 'hovernet_reference_keys.json').write_text('{\n' + ',\n'.join(modes) + '\n}\n')  # one key a line


if __name__ == '__main__':
    main(sys.argv[1])
