"""Fast MIG packing for the RL environment: how many GPUs hold a multiset of MIG instances, and a layout.

The ILP packs exactly (integer counts per valid partition); the environment needs an answer in
microseconds on every step, so it packs greedily: repeatedly cut the maximal partition that covers the
most compute slices of what is still unplaced (ties: the one that places more of the big instances, which
fit in fewer partitions, then the one with the fewest slices, i.e. the least waste), as many times over as it
stays fully useful. Greedy can use a GPU more than the optimum on awkward mixes;
the controller's check and the ILP fallback make that safe, never wrong. From Python, results are memoised per
(GPU type, counts), shared by every packer of the process (a layout's cuts; the GPUs a footprint needs): a new mix
is packed by a compiled (numba) kernel in a microsecond or two (in Python, 20 us). ``DecisionSpace.decode``, which
packs a few mixes of the share ladder on every environment step, counts GPUs inside its own kernel
(``greedy_gpus``) instead: unmemoised there, a mix costs less than a lookup from Python did.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numba
import numpy as np

from jigsaw.env.plan import GpuLayout
from jigsaw.profiles.types import GpuType

MEMO_SIZE = 1 << 16  # distinct instance mixes remembered (a few MB); the memo restarts when full
# one memo per GPU type (name and partitions) in a process, shared by every environment and controller on it:
# the cuts per instance counts, and the GPUs they use (what every decode asks, several times)
_MEMOS: dict[tuple, tuple[dict[tuple[int, ...], tuple[tuple[int, int], ...]], dict[tuple[int, ...], int]]] = {}


class Packer:
    """Greedy MIG packing for one GPU type, memoised by instance counts."""

    def __init__(self, gpu: GpuType) -> None:
        self.gpu = gpu
        self._parts = np.array([p.counts for p in gpu.maximal_partitions], dtype=np.int64)
        slices = np.array([p.compute_slices for p in gpu.mig_profiles], dtype=np.int64)
        self._waste = self._parts @ slices
        # the greedy's three keys as one integer score (most slices placed, then most big instances, then least
        # waste): each key's weight exceeds the range of the keys after it
        waste_range = int(self._waste.max()) + 1
        big_range = int((self._parts @ slices ** 2).max()) + 1
        self._score = slices * (big_range * waste_range) + slices ** 2 * waste_range
        key = (gpu.name, tuple(map(tuple, self._parts.tolist())), tuple(slices.tolist()))
        self._memo, self._gpus = _MEMOS.setdefault(key, ({}, {}))
        self.tables = (self._parts, self._score, self._waste)  # what greedy_gpus packs with, for compiled callers

    def pack(self, counts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Cut GPUs to hold ``counts`` instances per MIG profile (``gpu.mig_profiles`` order): a tuple of
        (index into ``gpu.maximal_partitions``, how many GPUs are cut that way). The GPUs used is the sum."""
        hit = self._memo.get(counts)
        if hit is not None:
            return hit
        if min(counts, default=0) < 0:
            raise ValueError(f"negative instance counts {counts}")
        cuts = _greedy(np.array(counts, dtype=np.int64), self._parts, self._score, self._waste)
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[counts] = result = tuple(map(tuple, cuts.tolist()))
        return result

    def gpus_needed(self, counts: tuple[int, ...]) -> int:
        hit = self._gpus.get(counts)
        if hit is None:
            if len(self._gpus) >= MEMO_SIZE:
                self._gpus.clear()
            self._gpus[counts] = hit = sum(times for _, times in self.pack(counts))
        return hit

    def layout(self, instances: Mapping[str, Sequence[tuple[str, ...]]]) -> tuple[GpuLayout, ...]:
        """GPU layouts holding ``instances``: per MIG profile name, the worker lists (``app/task`` names) of each
        instance of that profile. Instances left over in a cut partition stay empty."""
        gpu = self.gpu
        names = [p.name for p in gpu.mig_profiles]
        unknown = set(instances) - set(names)
        if unknown:
            raise ValueError(f"unknown MIG profile(s) {sorted(unknown)} for {gpu.name}")
        queues = {n: deque(instances.get(n, ())) for n in names}
        counts = tuple(len(queues[n]) for n in names)
        gpus: list[GpuLayout] = []
        for part, times in self.pack(counts):
            partition = tuple(gpu.maximal_partitions[part].names(gpu))
            for _ in range(times):
                gpus.append(GpuLayout(partition, tuple(queues[n].popleft() if queues[n] else () for n in partition)))
        return tuple(gpus)


@numba.njit(cache=True)
def greedy_gpus(counts, parts, score, waste):  # pragma: no cover - compiled
    """``Packer.gpus_needed`` for compiled callers (``Packer.tables``), unmemoised: inside a kernel a mix packs in
    well under a microsecond, less than the memo's lookup from Python costs."""
    return _greedy(counts, parts, score, waste)[:, 1].sum()


@numba.njit(cache=True)
def _greedy(counts, parts, score, waste):  # pragma: no cover - compiled
    """The module docstring's greedy: rows of (partition, GPUs cut so) until ``counts`` are placed."""
    rem = counts.copy()
    out = np.empty((rem.sum(), 2), dtype=np.int64)  # each cut places at least one instance
    n = 0
    while rem.any():
        best, best_score = 0, -(1 << 62)
        for i in range(parts.shape[0]):
            x = -waste[i]
            for m in range(rem.size):
                x += min(parts[i, m], rem[m]) * score[m]
            if x > best_score:
                best, best_score = i, x
        times = 1 << 62  # as many times over as it stays fully useful
        for m in range(rem.size):
            if parts[best, m] > 0 and rem[m] > 0:
                times = min(times, rem[m] // parts[best, m])
        times = max(1, times)
        for m in range(rem.size):
            rem[m] = max(rem[m] - times * parts[best, m], 0)
        out[n, 0], out[n, 1] = best, times
        n += 1
    return out[:n]
