from farm.core.jobqueue import JobQueue


def fill(queue, job, count, tier="12g", priority=0):
    queue.add_job(job, priority)
    for n in range(count):
        queue.push(job, f"{job}-{n}", tier)


def drain(queue, tier="12g", limit=100):
    taken = []
    while len(taken) < limit and (item := queue.take(tier)) is not None:
        taken.append(item[0])
    return taken


def test_jobs_of_one_priority_take_turns():
    queue = JobQueue(["12g", "24g"], {"12g": 1, "24g": 1})
    fill(queue, "big", 5)
    fill(queue, "small", 2)
    assert drain(queue) == ["big", "small", "big", "small", "big", "big", "big"]


def test_higher_priority_goes_first_then_fifo_sharing():
    queue = JobQueue(["12g"], {"12g": 1})
    fill(queue, "first", 2)
    fill(queue, "urgent", 2, priority=5)
    fill(queue, "later", 1)
    assert drain(queue) == ["urgent", "urgent", "first", "later", "first"]


def test_tier_rules_hold_across_jobs():
    queue = JobQueue(["12g", "24g"], {"12g": 1, "24g": 1})
    fill(queue, "a", 1, tier="24g")
    fill(queue, "b", 1, tier="12g")
    assert queue.take("12g") == ("b", "b-0", "12g")
    assert queue.take("12g") is None  # a 24g item never goes to a 12g worker
    assert queue.take("24g") == ("a", "a-0", "24g")


def test_removing_a_job_returns_its_queued_items():
    queue = JobQueue(["12g"], {"12g": 2})
    fill(queue, "a", 3)
    queue.take("12g")
    assert sorted(queue.remove_job("a")) == ["a-1", "a-2"] and len(queue) == 0
    assert queue.remove_job("missing") == []


def test_the_last_worker_of_a_tier_orphans_its_queues():
    queue = JobQueue(["12g", "24g"], {"12g": 1, "24g": 1})
    fill(queue, "a", 2)
    fill(queue, "b", 1)
    assert sorted(queue.worker_gone("12g")) == [("a", "a-0"), ("a", "a-1"), ("b", "b-0")]
    assert queue.has_bigger_tier("12g") and not queue.has_bigger_tier("24g")
