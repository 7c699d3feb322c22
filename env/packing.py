"""Fast MIG packing for the RL environment: how many GPUs hold a multiset of MIG instances, and a layout.

The ILP packs exactly (integer counts per valid partition); the environment needs an answer in
microseconds on every step, so it packs greedily: repeatedly cut the maximal partition that covers the
most compute slices of what is still unplaced (ties: the one that places more of the big instances, which
fit in fewer partitions, then the one with the fewest slices, i.e. the least waste), as many times over as it
stays fully useful. Greedy can use a GPU more than the optimum on awkward mixes;
the controller's check and the ILP fallback make that safe, never wrong. Results are memoised per
(GPU type, counts), shared by every packer of the process: the environment revisits the same mixes constantly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from env.plan import GpuLayout
from profiles.types import GpuType

MEMO_SIZE = 1 << 16  # distinct instance mixes remembered (a few MB); the memo restarts when full
# one memo per GPU type (name and partitions) in a process: every environment and controller on it shares it
# (and of its greedy's choices by capped counts, a small space)
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
        self._memo, self._choice = _MEMOS.setdefault(key, ({}, {}))
        # the greedy's choice sees the unplaced counts only up to what one partition holds of each profile
        self._cap = tuple(self._parts.max(axis=0).tolist())
        self._part_counts = [tuple(p) for p in self._parts.tolist()]

    def pack(self, counts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Cut GPUs to hold ``counts`` instances per MIG profile (``gpu.mig_profiles`` order): a tuple of
        (index into ``gpu.maximal_partitions``, how many GPUs are cut that way). The GPUs used is the sum."""
        hit = self._memo.get(counts)
        if hit is not None:
            return hit
        if min(counts, default=0) < 0:
            raise ValueError(f"negative instance counts {counts}")
        rem = list(counts)
        out: list[tuple[int, int]] = []
        while any(rem):  # plain Python: a handful of ints, where each numpy call would cost more than the work
            capped = tuple(map(min, rem, self._cap))
            best = self._choice.get(capped)
            if best is None:
                best = self._choice[capped] = int((np.minimum(self._parts, capped) @ self._score - self._waste).argmax())
            part = self._part_counts[best]
            times = max(1, min(r // p for r, p in zip(rem, part, strict=True) if p > 0 and r > 0))
            rem = [max(r - times * p, 0) for r, p in zip(rem, part, strict=True)]
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
