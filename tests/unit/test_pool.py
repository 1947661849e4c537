"""The warm pool's bookkeeping (awf_kernel.sandbox.pool), with the engine
replaced by a record of what would be asked of it. The pods themselves are
proven by the integration suites run with AWF_TEST_POOL_SIZE=1."""

from __future__ import annotations

import itertools

import pytest

from awf_kernel.sandbox import pool as poolmod
from awf_kernel.sandbox.docker import Pod
from awf_kernel.sandbox.pool import Pool, ReadyPod


@pytest.fixture
def engine(monkeypatch):
    state = {"removed": [], "dead": set()}
    monkeypatch.setattr(poolmod, "remove_pod", lambda kid: state["removed"].append(kid))
    monkeypatch.setattr(poolmod, "proxy_still_set_up", lambda pod: pod.kernel_id not in state["dead"])
    return state


def maker():
    counter = itertools.count(1)

    def make() -> ReadyPod:
        n = next(counter)
        return ReadyPod(Pod(f"pool-{n}", f"proxy-{n}", "", None), tuple(range(n * 10, n * 10 + 5)), f"/a/pool-{n}")
    return make


def test_fills_to_size_and_hands_each_pod_out_once(engine):
    pool, discarded = Pool(), []
    pool.fill("k", 2, maker(), discarded.append)
    assert pool.wait_filled("k") == 2
    first, second = pool.take("k"), pool.take("k")
    assert {first.pod.kernel_id, second.pod.kernel_id} == {"pool-1", "pool-2"}
    assert pool.take("k") is None            # never the same pod twice
    assert pool.take("other settings") is None
    pool.close()
    assert engine["removed"] == [] and discarded == []  # claimed pods are their kernels' now


def test_a_pod_that_stopped_is_removed_not_handed_out(engine):
    pool, discarded = Pool(), []
    pool.fill("k", 1, maker(), discarded.append)
    pool.wait_filled("k")
    engine["dead"].add("pool-1")
    assert pool.take("k") is None
    assert engine["removed"] == ["pool-1"] and [d.pod.kernel_id for d in discarded] == ["pool-1"]


def test_close_removes_unclaimed_pods_and_stops_filling(engine):
    pool, discarded = Pool(), []
    pool.fill("k", 3, maker(), discarded.append)
    pool.wait_filled("k")
    pool.close()
    assert sorted(engine["removed"]) == ["pool-1", "pool-2", "pool-3"]
    assert len(discarded) == 3  # their ports and audit folders go too
    pool.fill("k", 3, maker(), discarded.append)
    assert pool.ready_count("k") == 0  # a closed pool makes nothing


def test_a_failing_engine_means_cold_starts_not_errors(engine):
    pool = Pool()

    def broken():
        raise RuntimeError("engine down")
    pool.fill("k", 2, broken, lambda r: None)
    assert pool.wait_filled("k") == 0 and pool.take("k") is None


def test_size_zero_disables_the_pool(engine):
    pool = Pool()
    pool.fill("k", 0, maker(), lambda r: None)
    assert pool.wait_filled("k") == 0


def test_a_refill_after_a_claim_waits_and_a_closing_pool_cancels_it(engine):
    pool, made = Pool(), []
    make = maker()

    def counted():
        made.append(1)
        return make()
    pool.fill("k", 1, counted, lambda r: None, delay=0.5)
    assert pool.ready_count("k") == 0 and made == []  # the claimed kernel boots first
    assert pool.wait_filled("k") == 1
    other = Pool()
    other.fill("k", 1, counted, lambda r: None, delay=30)
    other.close(timeout=5)  # returns at once: the waiting filler is woken and makes nothing
    assert len(made) == 1
