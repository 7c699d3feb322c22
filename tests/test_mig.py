"""MIG geometry: the valid partitions of one GPU, checked against an independent brute force."""

from __future__ import annotations

import pytest
from conftest import brute_force_partitions, counts_of

from jigsaw.profiles.mig import enumerate_partitions
from jigsaw.profiles.types import MigProfile


@pytest.fixture(scope="module", params=["h100", "a100"])
def gpu(request, builtin_catalog):
    return builtin_catalog.gpus[request.param]


def test_partitions_equal_brute_force(gpu):
    expected = brute_force_partitions(gpu)
    got = [p.counts for p in gpu.partitions]
    assert len(got) == len(set(got)), "a partition is listed twice"
    assert set(got) == expected


def test_partition_list_is_small_enough_for_brute_force(gpu):
    places = sum(1 for p in gpu.mig_profiles for s in p.starts if s + p.width <= gpu.memory_slots)
    assert places <= 18


def test_every_partition_fits_compute_and_is_non_empty(gpu):
    for p in gpu.partitions:
        assert sum(p.counts) >= 1
        assert sum(c * q.compute_slices for c, q in zip(p.counts, gpu.mig_profiles, strict=True)) <= gpu.compute_slices
        assert len(p.names(gpu)) == sum(p.counts)


@pytest.mark.parametrize("names, valid", [
    ({"1g.10gb": 7}, True),
    ({"4g.40gb": 1, "3g.40gb": 1}, True),
    ({"7g.80gb": 1}, True),
    ({"3g.40gb": 2}, True),
    ({"2g.20gb": 3, "1g.10gb": 1}, True),
    ({"4g.40gb": 2}, False),
    ({"1g.10gb": 8}, False),
    ({"7g.80gb": 1, "1g.10gb": 1}, False),
    ({"3g.40gb": 3}, False),
    ({"2g.20gb": 4}, False),
])
def test_known_partitions(gpu, names, valid):
    assert (counts_of(gpu, names) in {p.counts for p in gpu.partitions}) is valid


def test_h100_has_1g20gb_but_not_more_than_four(builtin_catalog):
    # on the built-in H100 rules, 1g.20gb is 2 memory slots wide at even starts
    h100 = builtin_catalog.gpus["h100"]
    have = {p.counts for p in h100.partitions}
    assert counts_of(h100, {"1g.20gb": 4}) in have
    assert counts_of(h100, {"1g.20gb": 4, "1g.10gb": 1}) not in have


def test_maximal_partitions_are_exactly_the_non_dominated(gpu):
    every = brute_force_partitions(gpu)
    non_dominated = {a for a in every
                     if not any(b != a and all(x <= y for x, y in zip(a, b, strict=True)) for b in every)}
    got = [p.counts for p in gpu.maximal_partitions]
    assert len(got) == len(set(got))
    assert set(got) == non_dominated
    # and every partition is covered by some maximal one (an instance may stay idle)
    for a in every:
        assert any(all(x <= y for x, y in zip(a, b, strict=True)) for b in non_dominated)


def test_whole_gpu_segment(gpu):
    seg = gpu.segments[gpu.whole_gpu_segment]
    assert seg.mig_profile.compute_slices == gpu.compute_slices
    assert seg.mps_workers == 1
    assert seg.slices == gpu.compute_slices


def test_segment_cost_is_shared_by_its_workers(gpu):
    for seg in gpu.segments:
        assert seg.slices == pytest.approx(seg.mig_profile.compute_slices / seg.mps_workers)
        assert seg.sms_per_worker == pytest.approx(seg.mig_profile.sms / seg.mps_workers)
    assert len(gpu.segments) == len(gpu.mig_profiles) * len(gpu.mps_workers)


def test_small_geometry_by_hand():
    # 4 memory slots, 4 compute slices: 1g anywhere, 2g at 0 or 2, 4g at 0
    profiles = [MigProfile("1g", 1, 10, 1.0, 1, (0, 1, 2, 3)), MigProfile("2g", 2, 20, 2.0, 2, (0, 2)),
                MigProfile("4g", 4, 40, 4.0, 4, (0,))]
    got = {p.counts for p in enumerate_partitions(profiles, 4, 4)}
    assert got == {(1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (0, 1, 0), (1, 1, 0), (2, 1, 0), (0, 2, 0),
                   (0, 0, 1)}


def test_compute_limit_binds_before_memory():
    # 8 memory slots but only 3 compute slices: at most three 1g instances
    profiles = [MigProfile("1g", 1, 10, 1.0, 1, tuple(range(8)))]
    got = {p.counts for p in enumerate_partitions(profiles, 3, 8)}
    assert got == {(1,), (2,), (3,)}


def test_placement_beyond_memory_is_ignored():
    # a start that would overflow the memory slots is never used
    profiles = [MigProfile("2g", 2, 20, 2.0, 2, (0, 1, 3))]
    got = {p.counts for p in enumerate_partitions(profiles, 8, 4)}
    assert got == {(1,)}
