"""One home for random streams: the seeds a run derives for each purpose, its epoch order, and saving and
restoring every stream for an exact resume.

Every seed of a run is a function of ``(seed, purpose, ids...)`` (:func:`seed_for`).  The purposes that existed
before this module keep their historical formulas, so committed runs reproduce bit for bit; a new purpose gets
a ``SeedSequence`` of its own.
"""
import random
import zlib
from typing import Any, Dict, Optional

import numpy as np
import torch

# purpose -> the offset added to the run's seed (historical values; changing one changes every committed run)
_OFFSETS = {"validation": 7919, "test": 104729}


def seed_for(seed: int, purpose: str, *ids: int) -> int:
    """The seed of ``purpose`` in a run seeded ``seed`` (``ids``: epoch, rank, ... where the purpose has them):

    * ``"validation"``, ``"test"``: the fixed streams of the validation and test bounds (common random numbers
      across epochs);
    * ``"epoch order"`` (id: epoch): the batch order of an epoch;
    * ``"rank"`` (ids: epoch, step, rank): a data-parallel process's sampling stream when it (re)starts;
    * anything else: ``SeedSequence([seed, crc32(purpose), *ids])``.
    """
    if purpose in _OFFSETS and not ids:
        return seed + _OFFSETS[purpose]
    if purpose == "epoch order" and len(ids) == 1:
        return 1_000_003 * seed + ids[0]
    if purpose == "rank" and len(ids) == 3:
        return int(np.random.SeedSequence([seed % 2 ** 63, *ids]).generate_state(1)[0])     # < 2**32

    return int(np.random.SeedSequence([seed % 2 ** 63, zlib.crc32(purpose.encode()), *ids]).generate_state(1)[0])


def epoch_permutation(num_data: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits the training data: a function of (seed, epoch) only,
    so a run resumed mid-epoch replays exactly the batches it had not seen yet."""
    return torch.randperm(num_data, generator=torch.Generator().manual_seed(seed_for(seed, "epoch order", epoch)))


def rng_state(gpu: Optional[torch.device] = None) -> Dict[str, Any]:
    """Every random stream, as tensors and plain Python values (loadable with ``weights_only=True``); ``gpu``:
    this process's GPU in a multi-GPU run (it saves only its own stream), else every GPU's."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt_state, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "python": [version, list(mt_state), gauss]}
    if torch.cuda.is_available():
        # a process of a multi-GPU run saves only its own GPU's stream: get_rng_state_all() would open a
        # CUDA context on every GPU, in every process
        state["cuda"] = [torch.cuda.get_rng_state(gpu)] if gpu is not None else torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], gpu: Optional[torch.device] = None) -> None:
    """Restore what :func:`rng_state` saved (``gpu``: this process's GPU in a multi-GPU run)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    if "cuda" in state and torch.cuda.is_available():
        if gpu is not None:   # the first saved stream (rank 0's GPU) onto this process's GPU only
            torch.cuda.set_rng_state(state["cuda"][0], gpu)
        else:
            torch.cuda.set_rng_state_all(state["cuda"])
