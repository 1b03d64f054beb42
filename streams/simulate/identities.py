"""A population with known identities: who each identifier truly belongs to.

For judging identity stitching (issue 6's oracle test, and later the fault and
bench runs): people who use several identifiers across channels, store kiosks
shared by many members, and a phone typed onto another member's order. Pure
and seeded: the same arguments give the same events.

What the generator knows and the pipeline must find out:

- each person's identifiers: one or two web cookies, maybe an app device, a
  phone, a WeChat openid with its unionid, a store card; most are members;
- which events tie them together: logins (cookie + member id), app sessions
  (device + member id), guest orders (cookie + phone), member orders (member
  id + phone), WeChat binding (openid + unionid + member id), store purchases
  (card + phone);
- kiosks: a store's tablet (a device id) on which several members log in; it
  belongs to nobody and must link nobody;
- a typo: member B's one order carries member A's phone, which A used on
  several orders; the phone stays A's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from streams.touchpoint import record

HOUR = 3_600_000


@dataclass
class Population:
    events: list[dict[str, Any]]  # Touchpoint records, in no particular order
    owner: dict[tuple[str, str], str] = field(default_factory=dict)  # (type, value) -> person ("kiosk": nobody)
    kiosks: list[str] = field(default_factory=list)  # device ids of shared kiosks
    typo: tuple[str, str, str] | None = None  # (phone, its owner's member id, the member it was typed for)


def population(seed: int, people: int = 40, kiosk_users: int = 4, t0_ms: int = 1_793_462_400_000) -> Population:
    rng = random.Random(seed)
    pop = Population([])
    n = 0

    def emit(kind: str, channel: str, t: int, ids: dict[str, str], props: dict[str, Any] | None = None) -> None:
        nonlocal n
        n += 1
        pop.events.append(record.build(f"id-{seed}-{n:05d}", kind, t, channel, identifiers=ids, properties_=props))

    def own(person: str, kind: str, value: str) -> str:
        pop.owner[(kind, value)] = person
        return value

    members: list[tuple[str, str, str]] = []  # (person, member id, phone) of members with a phone
    for h in range(people):
        person = f"h{h:03d}"
        t = t0_ms + rng.randrange(0, 24 * HOUR)
        member = own(person, "member_id", f"M{seed}{h:04d}") if rng.random() < 0.8 else None
        cookies = [own(person, "anonymous_id", f"ck-{seed}-{h}-{i}") for i in range(rng.choice((1, 1, 2)) if member else 1)]
        device = own(person, "device_id", f"dv-{seed}-{h}") if member and rng.random() < 0.5 else None
        phone = own(person, "phone", f"+86139{seed % 100:02d}{h:06d}") if rng.random() < 0.7 else None
        for cookie in cookies:  # browsing, then a login on each browser (members)
            for _ in range(rng.randint(1, 3)):
                t += rng.randrange(60_000, HOUR)
                emit("page_viewed", "web", t, {"anonymous_id": cookie})
            if member:
                t += 60_000
                emit("login", "web", t, {"anonymous_id": cookie, "member_id": member})
        if device and member:
            t += HOUR
            emit("screen_viewed", "app", t, {"device_id": device, "member_id": member})
        if phone:
            for i in range(rng.randint(2, 3)):  # orders with the phone: the member's, or a guest's
                t += HOUR
                ids = {"member_id": member} if member else {"anonymous_id": cookies[0]}
                emit("order_completed", "web", t, {**ids, "phone": phone},
                     {"order_id": f"o-{seed}-{h}-{i}", "revenue": 99.0})
            if member:
                members.append((person, member, phone))
        if member and rng.random() < 0.4:
            openid = own(person, "wechat_openid", f"oid-{seed}-{h}")
            unionid = own(person, "wechat_unionid", f"uid-{seed}-{h}")
            t += HOUR
            emit("wechat_followed", "wechat_oa", t, {"wechat_openid": openid, "wechat_unionid": unionid},
                 {"account_id": "brand-oa"})
            t += 60_000
            emit("login", "wechat_oa", t, {"wechat_openid": openid, "member_id": member})
        if member and phone and rng.random() < 0.3:
            card = own(person, "pos_card", f"card-{seed}-{h}")
            t += HOUR
            emit("order_completed", "store_pos", t, {"pos_card": card, "phone": phone},
                 {"order_id": f"pos-{seed}-{h}", "revenue": 199.0})

    # A store's tablet on which several members log in: shared, nobody's.
    kiosk = f"kiosk-{seed}"
    pop.kiosks.append(kiosk)
    pop.owner[("device_id", kiosk)] = "kiosk"
    for i, (_, member, _) in enumerate(members[:kiosk_users]):
        emit("login", "store_pos", t0_ms + 30 * HOUR + i * 60_000, {"device_id": kiosk, "member_id": member})

    # Member B's order, with member A's phone typed in by mistake: once, against A's orders.
    if len(members) >= 2:
        (_, a_member, a_phone), (_, b_member, _) = members[0], members[1]
        emit("order_completed", "store_pos", t0_ms + 40 * HOUR, {"member_id": b_member, "phone": a_phone},
             {"order_id": f"typo-{seed}", "revenue": 59.0})
        pop.typo = (a_phone, a_member, b_member)
    rng.shuffle(pop.events)
    return pop
