"""Pending cart abandons survive a worker's crash: 2 workers, 4 partitions, carts waiting on every
partition when one worker is SIGKILLed. The other worker takes its partitions over and decides the
carts that fall due while it is down; the killed one, restarted, takes some back and decides the rest.
Every cart gets exactly one record on the triggers topic, and a cancelled cart none."""

from __future__ import annotations

import time

import pytest

from streams.processes import Child, metrics_lines
from streams.tally import TopicReader
from streams.topics import partition_for
from streams.triggers.delivery import in_holdout, trigger_id
from tests.conftest import encoded
from tests.test_triggers_e2e import DAY0, MIN, D, H, Member, advance

pytestmark = pytest.mark.e2e


def _triggers_partitions(port: int | None, t_ms: int) -> set[int]:
    """The partitions where a worker's triggers stage has applied stream time t_ms (its /metrics)."""
    assert port is not None
    return {int(line.split('partition="')[1].split('"')[0]) for line in metrics_lines(port)
            if line.startswith("touchline_stream_time_seconds{") and 'stage="triggers"' in line
            and float(line.split()[-1]) >= t_ms / 1000}


def _serving(child: Child, timeout_s: float = 60.0) -> None:
    """Until a (re)started worker answers on its /metrics port."""
    assert child.port is not None
    deadline = time.monotonic() + timeout_s
    while True:
        assert child.proc.poll() is None, f"{child.name} exited; log: {child.log_path}"
        try:
            metrics_lines(child.port, timeout_s=2.0)
            return
        except OSError:
            assert time.monotonic() < deadline, f"{child.name} never served /metrics"
            time.sleep(0.2)


def test_pending_carts_fire_exactly_once_across_a_worker_sigkill_and_restart(stack_factory) -> None:
    stack = stack_factory(workers=2, sink=False)
    n = stack.settings.partitions
    assert n >= 4
    members = [Member(f"MK{i}") for i in range(100) if not in_holdout("cart_abandon", f"member_id:MK{i}", 0.1)][:12]
    noon = DAY0 + 12 * H
    # Group A: carts added 12:00-12:05, due 12:30-12:35; group B: added 13:00-13:05, due 13:30-13:35.
    # A5 is checked out before the crash; B5's owner orders while the worker is down.
    adds = {f"A{i}": (members[i], noon + i * MIN) for i in range(6)}
    adds |= {f"B{i}": (members[6 + i], noon + H + i * MIN) for i in range(6)}
    a5_owner = members[5]
    produced = [e for m in members for e in m.reachable_on_wechat(noon - D)]
    produced += [m.cart(cart, t) for cart, (m, t) in adds.items()]
    produced.append(a5_owner.event("checkout-A5", "checkout_started", noon + 10 * MIN, cart_id="A5"))
    stack.produce([encoded(e) for e in produced])
    reader = TopicReader(stack.settings)
    stack.wait_for(reader, lambda t: len(t.event_ids) == len(produced))
    before = noon + 20 * MIN  # every cart waiting (A5 cancelled)
    advance(stack, before)
    reader.poll(timeout=1.0)
    assert reader.tally.triggers == {}

    person = {m: reader.tally.person_of_event[f"{m.member_id}-consent"] for m in members}
    pending = {cart: partition_for(person[m], n) for cart, (m, _) in adds.items() if cart != "A5"}
    assert set(pending.values()) == set(range(n))  # carts wait on every partition
    victim = next(c for c in stack.supervisor.children if c.name == "worker-1")
    held = _triggers_partitions(victim.port, before)
    assert held and any(p in held for p in pending.values())  # among them some the victim decides
    stack.supervisor.kill(victim)

    # While worker-1 is down: B5's owner orders (cancelling B5), and group A falls due.
    b5_owner = members[11]
    order = b5_owner.order("o-B5", noon + H + 10 * MIN, 250.0)
    stack.produce([encoded(order)])
    produced.append(order)
    mid = noon + 45 * MIN
    advance(stack, mid)
    group_a = {c for c in pending if c.startswith("A")}
    stack.wait_for(reader, lambda t: {r["correlation_key"] for r in t.triggers.values()} >= group_a)

    _serving(stack.supervisor.start_worker(1))
    end = noon + 2 * H  # group B falls due, decided by both workers again
    advance(stack, end)
    fired = set(pending) - {"B5"}
    tally = stack.wait_for(reader, lambda t: len(t.event_ids) == len(produced) and len(t.triggers) >= len(fired))
    reader.poll(timeout=2.0)
    reader.close()

    records = {r["correlation_key"]: r for r in tally.triggers.values()}
    assert set(records) == fired  # none missing, none for a cancelled cart
    assert {tally.trigger_records[r["trigger_id"]] for r in records.values()} == {1}  # exactly once on the topic
    for cart, r in records.items():
        m, added = adds[cart]
        assert r["trigger_id"] == trigger_id("cart_abandon", cart, person[m])
        assert (r["rule"], r["person_id"], r["outcome"], r["channel"], r["handle"]) == (
            "cart_abandon", person[m], "fire", "wechat_oa", m.openid)
        assert r["payload"] == {"cart_id": cart, "items": '["sku-1"]'}
        assert (r["due_at_ms"], r["fired_at_ms"]) == (added + 30 * MIN, mid if cart.startswith("A") else end)
