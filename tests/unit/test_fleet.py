"""The fleet policy (farm/core/fleet.py): workers follow the cluster's GPUs and the queue."""

from farm.core.fleet import FleetWorker, fleet_changes

ORDER = ["12g", "24g", "80g"]


def changes(**kwargs):
    base = dict(slots={}, workers=[], starting={}, queued={}, order=ORDER, now=1000.0, idle_timeout_s=300.0)
    return fleet_changes(**{**base, **kwargs})


def test_a_node_that_joins_gets_workers_while_work_waits():
    busy = [FleetWorker("12g-0", "12g", None)]
    assert changes(slots={"12g": 3}, workers=busy, queued={"12g": 5}).start == {"12g": 2}
    assert changes(slots={"12g": 3}, workers=busy, queued={}).start == {}  # nothing to do: no new worker


def test_idle_and_starting_workers_absorb_work_first():
    idle = [FleetWorker("12g-0", "12g", 990.0)]
    assert changes(slots={"12g": 4}, workers=idle, starting={"12g": 1}, queued={"12g": 2}).start == {}
    assert changes(slots={"12g": 4}, workers=idle, starting={"12g": 1}, queued={"12g": 4}).start == {"12g": 2}


def test_work_a_tier_cannot_absorb_flows_to_bigger_tiers():
    result = changes(slots={"12g": 1, "80g": 2}, queued={"12g": 5})
    assert result.start == {"12g": 1, "80g": 2}
    assert changes(slots={"12g": 1, "80g": 2}, queued={"80g": 1}).start == {"80g": 1}  # never down to a smaller card


def test_concurrent_model_loads_are_capped():
    assert changes(slots={"12g": 16}, queued={"12g": 100}, max_loads=4).start == {"12g": 4}
    assert changes(slots={"12g": 16}, starting={"12g": 3}, queued={"12g": 100}, max_loads=4).start == {"12g": 1}


def test_idle_workers_stop_after_the_timeout_keeping_the_minimum():
    workers = [FleetWorker("12g-0", "12g", 100.0), FleetWorker("12g-1", "12g", 800.0), FleetWorker("24g-0", "24g", 100.0),
               FleetWorker("24g-1", "24g", None)]
    result = changes(slots={"12g": 2, "24g": 2}, workers=workers, min_per_tier={"24g": 2})
    assert result.stop == ("12g-0",)  # 12g-1 idle only 200 s; 24g at its minimum
    assert changes(slots={"12g": 2}, workers=workers[:2], idle_timeout_s=0).stop == ()  # 0: never


def test_a_minimum_starts_workers_without_work_and_idle_ones_that_could_steal_stay():
    assert changes(slots={"24g": 2}, min_per_tier={"24g": 1}).start == {"24g": 1}
    idle = [FleetWorker("24g-0", "24g", 0.0)]
    assert changes(slots={"24g": 1}, workers=idle, queued={"12g": 3}).stop == ()  # it can steal 12g work


def test_the_autoscaler_is_asked_for_the_workers_there_are_plus_what_waits_capped():
    from farm.core.fleet import autoscale_demand

    caps = {"12g": 16, "80g": 4}
    # 1 worker busy, 3 items of its own waiting: 4 GPUs; the 80g tier waits for 10: its cap.
    assert autoscale_demand(queued={"12g": 3, "80g": 10}, workers={"12g": 1}, idle={}, caps=caps) == {"12g": 4, "80g": 4}
    # idle workers absorb the queue first; a tier not named in the caps is never asked for
    assert autoscale_demand(queued={"12g": 2, "24g": 9}, workers={"12g": 2}, idle={"12g": 2}, caps=caps) == {"12g": 2}
    # the queue drained: the ask shrinks to the workers there are, then to nothing once they stop
    assert autoscale_demand(queued={}, workers={"80g": 2}, idle={"80g": 2}, caps=caps) == {"80g": 2}
    assert autoscale_demand(queued={}, workers={}, idle={}, caps=caps) == {}
    assert autoscale_demand(queued={}, workers={}, idle={}, caps=caps, minimum={"80g": 1}) == {"80g": 1}


def test_autoscaler_bundles_carry_a_gpu_and_the_tier_resource():
    from farm.core.fleet import resource_bundles

    assert resource_bundles({"80g": 2, "12g": 1}) == [
        {"GPU": 1.0, "farm_tier_12g": 1.0}, {"GPU": 1.0, "farm_tier_80g": 1.0}, {"GPU": 1.0, "farm_tier_80g": 1.0},
    ]
    assert resource_bundles({}) == []
