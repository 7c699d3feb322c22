"""Valid MIG partitions of one GPU, derived from each profile's placement rules."""

from __future__ import annotations

from collections.abc import Sequence

from .types import MigProfile, Partition


def placements(profiles: Sequence[MigProfile], memory_slots: int) -> list[tuple[int, int]]:
    """Every (profile index, start slot) a profile's rules allow, as long as it fits the memory slots."""
    return [(i, s) for i, p in enumerate(profiles) for s in p.starts if s + p.width <= memory_slots]


def enumerate_partitions(profiles: Sequence[MigProfile], compute_slices: int,
                         memory_slots: int) -> tuple[Partition, ...]:
    """Every distinct non-empty multiset of instances that can be placed on one GPU without two
    instances sharing a memory slot and with at most ``compute_slices`` compute slices in all.

    Depth-first over placements in a fixed order (each placement used at most once, later ones only),
    so each set of placements is visited once; distinct instance counts are kept.
    """
    options = placements(profiles, memory_slots)
    found: set[tuple[int, ...]] = set()

    def extend(first: int, used_mask: int, used_compute: int, counts: list[int]) -> None:
        for j in range(first, len(options)):
            i, start = options[j]
            p = profiles[i]
            mask = ((1 << p.width) - 1) << start
            if mask & used_mask or used_compute + p.compute_slices > compute_slices:
                continue
            counts[i] += 1
            found.add(tuple(counts))
            extend(j + 1, used_mask | mask, used_compute + p.compute_slices, counts)
            counts[i] -= 1

    extend(0, 0, 0, [0] * len(profiles))
    return tuple(Partition(c) for c in sorted(found, key=lambda c: (-sum(c), c)))
