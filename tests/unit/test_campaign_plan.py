"""The fault campaign's plan (issue #30): a seed draws the same faults again, so a campaign
that found something replays from the seed it printed; freezes and link cuts outlast the
lease (they test what happens when it expires), and the faults overlap."""

from kcmlab.campaign import kinds, plan


def test_a_seed_draws_the_same_plan_and_another_seed_another():
    assert plan(21, 10, 4.0) == plan(21, 10, 4.0)
    assert plan(21, 10, 4.0) != plan(22, 10, 4.0)


def test_freezes_and_cuts_outlast_the_lease_and_every_kind_is_drawn_over_a_campaign():
    steps = plan(7, 200, 4.0)

    assert {step.kind for step in steps} == set(kinds(4.0))
    assert all(step.seconds > 4.0 for step in steps if step.kind in ("freeze", "cut"))
    assert [step.offset for step in steps] == sorted(step.offset for step in steps)


def test_faults_overlap_some_of_the_time():
    steps = plan(7, 200, 4.0)

    overlapping = [a for a, b in zip(steps, steps[1:]) if a.offset + a.seconds > b.offset]
    assert overlapping, "no fault still running when the next began"
