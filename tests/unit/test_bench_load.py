"""The bench's load side: the capacity search, the raid's texts and the latency plot (no broker needed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from models.normalise import normalise_text
from pipeline.devstack.bench_load import LoadPoint, capacity_search, latency_plot_svg, raid_texts

pytestmark = pytest.mark.unit


def _stack(limit: float):
    """A fake stack whose p99 is 40 ms up to ``limit`` msgs/s and 900 ms beyond; records what it was offered."""
    offered: list[float] = []

    def run_at(rate: float) -> LoadPoint:
        offered.append(rate)
        ok = rate <= limit
        return LoadPoint(rate, rate if ok else limit, 20.0, 40.0 if ok else 900.0, 0)

    return run_at, offered


def test_capacity_search_steps_up_then_bisects_to_within_four_percent() -> None:
    run_at, offered = _stack(640.0)
    capacity, points = capacity_search(run_at, 200.0, 150.0, max_points=12)
    assert offered[:4] == [200.0, 300.0, 450.0, 675.0]  # up by 1.5x until a load fails
    assert 0.96 * 640 <= capacity <= 640 and len(points) == len(offered) <= 12
    assert [p.offered_msgs_per_s for p in points] == sorted(offered)


def test_a_first_load_over_the_bound_steps_down_and_a_budget_of_points_holds() -> None:
    run_at, offered = _stack(100.0)
    capacity, _ = capacity_search(run_at, 300.0, 150.0, max_points=12)
    assert offered[:3] == [300.0, 200.0, 300.0 / 1.5 / 1.5]  # down by 1.5x until one passes, then bisection
    assert 0.96 * 100 <= capacity <= 100
    run_at, offered = _stack(0.5)
    assert capacity_search(run_at, 2.0, 150.0)[0] == 0.0  # none passes: capacity 0
    run_at, offered = _stack(10_000.0)
    capacity, _ = capacity_search(run_at, 100.0, 150.0, max_points=3)
    assert offered == [100.0, 150.0, 225.0] and capacity == 225.0


def test_a_load_the_stack_does_not_keep_up_with_or_loses_from_is_over_the_bound() -> None:
    assert LoadPoint(500, 499, 10, 149, 0).within(150)
    assert not LoadPoint(500, 400, 10, 100, 0).within(150)  # fell behind: the backlog would grow
    assert not LoadPoint(500, 500, 10, 100, 1).within(150)
    assert not LoadPoint(500, 500, 10, 151, 0).within(150)


def test_raid_messages_are_copies_that_normalise_to_their_few_texts() -> None:
    distinct = ["gg ez noob", "buy gold at cheap-gold dot com", "RAID RAID RAID"]
    raid = raid_texts(300, distinct, seed=1)
    assert len(raid) == 300 and len(set(raid)) > len(distinct)  # shouted and spaced copies too
    folded = {normalise_text(t, 10_000).lower() for t in raid}
    assert folded == {normalise_text(t, 10_000).lower() for t in distinct}


def test_the_latency_plot_is_an_svg_with_both_curves_the_bound_and_the_capacity() -> None:
    points = [{"offered_msgs_per_s": r, "latency_p50_ms": p50, "latency_p99_ms": p99}
              for r, p50, p99 in ((200, 20, 40), (300, 22, 60), (450, 30, 120), (675, 400, 2400))]
    svg = latency_plot_svg(points, 520.0, 150.0, "latency <by> load & more")
    root = ET.fromstring(svg)  # well-formed XML, title escaped
    assert root.tag.endswith("svg") and len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert "capacity 520 msgs/s" in svg and "p99 bound 150 ms" in svg and "2,400" in svg  # off-scale value written
