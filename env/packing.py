"""Fast MIG packing for the RL environment: how many GPUs hold a multiset of MIG instances, and a layout.

The ILP packs exactly (integer counts per valid partition); the environment needs an answer in
microseconds on every step, so it packs greedily: repeatedly cut the maximal partition that covers the
most compute slices of what is still unplaced (ties: the one that places more of the big instances, which
fit in fewer partitions, then the one with the fewest slices, i.e. the least waste), as many times over as it
stays fully useful. Greedy can use a GPU more than the optimum on awkward mixes;
the controller's check and the ILP fallback make that safe, never wrong. Results are memoised per
(GPU type, counts): the environment revisits the same mixes constantly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from env.plan import GpuLayout
from profiles.types import GpuType

MEMO_SIZE = 1 << 16  # distinct instance mixes remembered (a few MB); the memo restarts when full


class Packer:
    """Greedy MIG packing for one GPU type, memoised by instance counts."""

    def __init__(self, gpu: GpuType) -> None:
        self.gpu = gpu
        self._parts = np.array([p.counts for p in gpu.maximal_partitions], dtype=np.int64)
        self._slices = np.array([p.compute_slices for p in gpu.mig_profiles], dtype=np.int64)
        self._slices_sq = self._slices ** 2
        self._waste = self._parts @ self._slices
        self._memo: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}

    def pack(self, counts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Cut GPUs to hold ``counts`` instances per MIG profile (``gpu.mig_profiles`` order): a tuple of
        (index into ``gpu.maximal_partitions``, how many GPUs are cut that way). The GPUs used is the sum."""
        hit = self._memo.get(counts)
        if hit is not None:
            return hit
        rem = np.array(counts, dtype=np.int64)
        if (rem < 0).any():
            raise ValueError(f"negative instance counts {counts}")
        parts = self._parts
        out: list[tuple[int, int]] = []
        while rem.any():
            held = np.minimum(parts, rem)
            best = int(np.lexsort((self._waste, -(held @ self._slices_sq), -(held @ self._slices)))[0])
            used = (parts[best] > 0) & (rem > 0)
            times = max(1, int((rem[used] // parts[best][used]).min()))
            rem = np.maximum(rem - times * parts[best], 0)
            out.append((best, times))
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[counts] = result = tuple(out)
        return result

    def gpus_needed(self, counts: tuple[int, ...]) -> int:
        return sum(times for _, times in self.pack(counts))

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
