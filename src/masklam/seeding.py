"""Named seed streams: one user seed, independent random streams for each use of it.

Every random draw of masklam derives from a user seed through a `numpy.random.SeedSequence` whose
entropy is `[seed, index, STREAMS[stream]]`, so two uses of the same seed (collecting trajectory i,
evaluating episode i) never share a stream: a collected trajectory and an evaluation episode share no start
state, background video offset, camera walk or colour walk (but by a collision of two streams' 32-bit reset
seeds, odds about 2**-32 per pair of episodes).

The `collect` stream has tag 0, and SeedSequence([seed, index, 0]) equals SeedSequence([seed, index]),
the seeding collection has always used: datasets stay byte-identical across this change.
"""
from __future__ import annotations

import numpy as np

from masklam.errors import MasklamError

STREAMS: dict[str, int] = {
    "collect": 0,  # the environment reset seed of collected trajectory `index`
    "action_noise": 1,  # the expert's Gaussian action noise in collected trajectory `index`
    "eval": 2,  # the environment reset seed of evaluation episode `index`
}


SEED_RANGE = 2**32
"""seeds lie in 0 .. 2**32 - 1 (what numpy's generators and SeedSequence's one word of entropy take)"""


def check_seeds(**seeds: int) -> None:
    """One line, before any work, for a seed outside 0 .. 2**32 - 1 (``check_seeds(seed=s, split_seed=t)``)."""
    for name, value in seeds.items():
        if not 0 <= int(value) < SEED_RANGE:
            raise MasklamError(f"{name} must lie in 0..2**32-1, got {value}")


def seed_sequence(stream: str, seed: int, index: int) -> np.random.SeedSequence:
    """The SeedSequence of item `index` of `stream` under the user seed `seed`."""
    if stream not in STREAMS:
        raise KeyError(f"unknown seed stream {stream!r}; one of {', '.join(STREAMS)}")
    if not (0 <= int(seed) < 2**32 and 0 <= int(index) < 2**32):
        # a larger number takes two words of entropy and would shift the stream tag into another stream's place
        raise MasklamError(f"seeds and indices must lie in 0..2**32-1, got seed {seed}, index {index}")
    return np.random.SeedSequence([int(seed), int(index), STREAMS[stream]])


def stream_seed(stream: str, seed: int, index: int) -> int:
    """A 32-bit integer seed (for `env.reset(seed=...)`) of item `index` of `stream`."""
    return int(seed_sequence(stream, seed, index).generate_state(1)[0])


def stream_rng(stream: str, seed: int, index: int) -> np.random.Generator:
    """A numpy Generator for item `index` of `stream`."""
    return np.random.default_rng(seed_sequence(stream, seed, index))
