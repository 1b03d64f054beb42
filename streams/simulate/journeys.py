"""Human journeys: the valid touchpoints of simulated people, session by session.

Internal to the simulator (``traffic.generate`` is the public entry). Each human
is a member (member id, phone, loyalty card) or an anonymous visitor, with 1..n
devices (a web cookie, an app install, a mini-program) plus a WeChat openid and
a marketplace buyer id. Sessions are generated in start-time order across all
humans and then sorted by event time, so the stream interleaves people the way
a collector sees them.

Invariants the ground truth relies on:
- a human's sessions never overlap; after an abandoned cart the human is away
  for at least the abandon delay, so no purchase of theirs cancels it;
- members fill carts only after logging in during that session (every cart
  event then carries the member id); non-members fill carts anonymously and
  never log in, and never on a shared device. The skeleton cannot move a
  pending cart across a merge.

Shared devices (``SimConfig.shared_devices``, default 0): a device (one cookie,
plus a device id for an app) used by a group of two members and, half the
time, one more human, e.g. a family tablet or a store kiosk. Groups are
disjoint; the device is added to each human of the group, whose first session
is on it (a member's first session there always logs in), so both members
really identify on it unless the event target stops the run first. Different humans' sessions on it may interleave. The
skeleton links the cookie to whichever member identifies first, so the others'
anonymous events there are attributed to that member: the known over-merge
``traffic`` reports. Only member sessions that logged in fill carts there, so
every cart event on a shared device carries its member's id and no anonymous
order on it can cancel the first member's cart. With 0, no random draw is
added and the output is the same as without the option.
"""

from __future__ import annotations

import heapq
import random
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.touchpoint.record import build
from streams.touchpoint.taxonomy import CHANNELS, EVENT_TYPES

if TYPE_CHECKING:
    from streams.simulate.traffic import SimConfig

MINUTE_MS = 60_000
DAY_MS = 24 * 60 * MINUTE_MS
DEVICE_CHANNELS = ("web", "app", "mini_program")
MEMBER_ONLY = frozenset({"store_pos", "partner", "sms", "email"})
SOURCE_APP = {"web": "brand-web", "app": "brand-app", "mini_program": "brand-mini", "wechat_oa": "brand-oa",
              "store_pos": "pos", "customer_service": "cs-desk", "partner": "partner-hub",
              "sms": "sms-gateway", "email": "esp"}
MARKETPLACES = ("tmall", "jd", "douyin")
CATEGORIES = ("men/shoes/basketball", "men/shoes/running", "women/shoes/sneakers", "women/fashion/dresses",
              "women/fashion/coats", "men/apparel/jackets", "kids/shoes/school", "beauty/skincare/serum")
CITIES = ("Shanghai", "Beijing", "Shenzhen", "Guangzhou", "Hangzhou", "Chengdu", "Wuhan")
PRODUCTS = 240
# Sessions average a handful of valid events at the default rates. This only
# spaces each human's sessions so that `events` is reached a little before
# `days` run out (slightly low: better to stop at the target than at the end).
EVENTS_PER_SESSION = 4.5
ID_FIELDS = ("anonymous_id", "device_id", "member_id", "phone", "email", "wechat_openid",
             "wechat_unionid", "platform_buyer_id", "pos_card")
OFFICIAL_ACCOUNT = "wx-brand-oa"
PARTNERS = ("airline-miles", "coffee-club", "bank-card")
STORES = 40  # store_pos sessions pick one of S000..S039 (streams.simulate.reference: their reference rows)


@dataclass
class Human:
    idx: int
    member_id: str | None
    phone: str
    city: str
    devices: list[tuple[str, str, str | None]]  # (channel, anonymous_id, device_id)
    openid: str
    buyer_id: str
    marketplace: str
    followed: bool = False


def catalog(rng: random.Random) -> list[tuple[str, str, float]]:
    """The products on sale: (product id, category path, price). ``Journeys`` draws it first from its rng."""
    return [(f"P{i:05d}", rng.choice(CATEGORIES), float(rng.choice((99, 199, 299, 599, 899, 1299))))
            for i in range(PRODUCTS)]


class Journeys:
    """Valid touchpoints of sessions, generated human by human in session-start order."""

    def __init__(self, config: SimConfig, rng: random.Random) -> None:
        self.cfg, self.rng = config, rng
        self.events: list[dict[str, Any]] = []
        self.carts, self.orders, self.revenue = 0, 0, 0.0
        self.abandoned: list[str] = []
        self.active: set[int] = set()
        self.owner: dict[str, int] = {}  # event id -> index of the human who did it
        self.shared_anon: set[str] = set()  # cookies of shared devices
        self.first_on_shared: dict[int, tuple[str, str, str | None]] = {}  # human -> device of first session
        self.catalog = catalog(rng)
        self.humans = [self._human(i) for i in range(config.persons)]
        if config.shared_devices:  # no draw at all otherwise: default output unchanged
            self._share_devices(config.shared_devices)

    def token(self, bits: int = 64) -> str:
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def _human(self, idx: int) -> Human:
        r, member = self.rng, self.rng.random() < self.cfg.member_share
        devices = []
        for _ in range(r.randint(1, self.cfg.devices_per_person)):
            ch = r.choice(DEVICE_CHANNELS)
            devices.append((ch, f"anon-{self.token()}", f"dev-{self.token()}" if ch == "app" else None))
        return Human(idx, f"M{idx:06d}{r.randrange(1000):03d}" if member else None,
                      f"+861{r.randrange(10**10):010d}", r.choice(CITIES), devices,
                      f"o-{self.token(96)}", f"buyer-{self.token()}", r.choice(MARKETPLACES))

    def _share_devices(self, count: int) -> None:
        """Give ``count`` new devices to disjoint groups of two members (plus, half the time, one more human).

        Fewer if there are not enough members; the ground truth counts what the events realise.
        """
        r = self.rng
        members = [h for h in self.humans if h.member_id]
        r.shuffle(members)
        grouped = {h.idx for h in members[: 2 * count]}
        others = [h for h in self.humans if h.idx not in grouped]
        for k in range(min(count, len(members) // 2)):
            group = members[2 * k: 2 * k + 2]
            if others and r.random() < 0.5:
                group.append(others.pop(r.randrange(len(others))))
            ch = r.choice(DEVICE_CHANNELS)
            device = (ch, f"anon-{self.token()}", f"dev-{self.token()}" if ch == "app" else None)
            self.shared_anon.add(device[1])
            for h in group:
                h.devices.append(device)
                self.first_on_shared[h.idx] = device

    def run(self) -> list[dict[str, Any]]:
        cfg, horizon = self.cfg, self.cfg.days * DAY_MS
        sessions = max(cfg.events / (cfg.persons * EVENTS_PER_SESSION), 1e-9)
        mean_gap = horizon / sessions  # from one session start to the next, per human
        queue = [(cfg.start_ms + int(self.rng.random() * min(mean_gap, horizon)), h.idx) for h in self.humans]
        heapq.heapify(queue)
        while queue and len(self.events) < cfg.events:
            t, idx = heapq.heappop(queue)
            end = self._session(self.humans[idx], t)
            nxt = max(end + 5 * MINUTE_MS, t + int(self.rng.expovariate(1 / mean_gap)))
            if nxt < cfg.start_ms + horizon:
                heapq.heappush(queue, (nxt, idx))
        if cfg.hot_key_share > 0 and self.events:
            self._hot_kiosk(round(len(self.events) * cfg.hot_key_share / (1 - cfg.hot_key_share)))
        self.events.sort(key=lambda e: e["event_time_ms"])  # stable: ties keep generation order
        return self.events

    def emit(self, h: Human, channel: str, etype: str, t: int, ids: dict[str, Any],
             context: dict[str, Any] | None = None, props: dict[str, Any] | None = None,
             **top: Any) -> int:
        """Append one valid touchpoint at t; return the time of the human's next action."""
        if etype not in EVENT_TYPES or channel not in CHANNELS:
            raise ValueError(f"{etype!r} on {channel!r} is outside the taxonomy")
        self.events.append(build(
            str(uuid.UUID(int=self.rng.getrandbits(128), version=4)), etype, t, channel,
            receive_time_ms=t + self.rng.randint(0, 3000), identifiers=ids,
            context={"city": h.city, **(context or {})}, properties_=props,
            source_app=SOURCE_APP.get(channel, h.marketplace), **top,
        ))
        self.active.add(h.idx)
        self.owner[self.events[-1]["event_id"]] = h.idx
        return t + self.rng.randint(5_000, 90_000)

    def _session(self, h: Human, t: int) -> int:
        """One session of one human starting at t; returns when the human is free again."""
        if h.idx in self.first_on_shared:  # a sharer's first session: on the shared device, logged in
            return self._device_session(h, self.first_on_shared.pop(h.idx), t, force_login=True)
        allowed = [c for c, w in self.cfg.channel_mix.items() if w > 0 and (h.member_id or c not in MEMBER_ONLY)]
        weights = [self.cfg.channel_mix[c] for c in allowed]
        ch = self.rng.choices(allowed, weights)[0] if allowed else DEVICE_CHANNELS[0]
        if ch in DEVICE_CHANNELS or not allowed:
            same = [d for d in h.devices if d[0] == ch]
            return self._device_session(h, self.rng.choice(same or h.devices), t)
        return self._other_session(h, ch, t)

    def _product(self) -> tuple[str, str, float]:
        return self.rng.choice(self.catalog)

    def _hot_kiosk(self, count: int) -> None:
        """``count`` anonymous page and product views from one store kiosk's browser, evenly spread
        from the first event to the last: one route key and one person carrying a large share."""
        kiosk = self._human(len(self.humans))
        kiosk.member_id = None
        self.humans.append(kiosk)
        ids: dict[str, Any] = {"anonymous_id": f"anon-kiosk-{self.token()}", "device_id": None}
        first = min(e["event_time_ms"] for e in self.events)
        span = max(e["event_time_ms"] for e in self.events) - first
        for i in range(count):
            t = first + span * i // max(1, count)
            if i % 3:
                pid, cat, price = self._product()
                self.emit(kiosk, "web", "product_viewed", t, ids, {"page_url": f"/p/{pid}"},
                          {"product_id": pid, "category": cat, "price": price, "currency": "CNY"})
            else:
                self.emit(kiosk, "web", "page_viewed", t, ids, {"page_url": "/web/home"})

    def _device_session(self, h: Human, device: tuple[str, str, str | None], t: int,
                        force_login: bool = False) -> int:
        r, (ch, anon, dev) = self.rng, device
        ids: dict[str, Any] = {"anonymous_id": anon, "device_id": dev}
        views = r.randint(1, 5)
        login = h.member_id and (force_login or r.random() < self.cfg.login_rate)
        login_at = r.randint(0, views) if login else -1
        page = "screen_viewed" if ch == "app" else "page_viewed"
        t = self.emit(h, ch, page, t, ids, {"page_url": f"/{ch}/home", "campaign": r.choice((None, "double11"))})
        if ch == "mini_program" and r.random() < 0.2:
            t = self.emit(h, ch, "minigame_played", t, ids, None,
                          {"game_id": "spin-wheel", "points": r.choice((5, 10, 20))})
        seen = []
        for i in range(views + 1):
            if i == login_at:  # identify carries both the cookie and the member id: the link
                ids = {**ids, "member_id": h.member_id}
                t = self.emit(h, ch, "identify", t, ids)
            if i == views:
                break
            if r.random() < 0.3:
                keyword = r.choice(("basketball shoes", "dress", "serum", "coat"))
                t = self.emit(h, ch, "products_searched", t, ids, {"search_keyword": keyword},
                              {"query": keyword, "results": r.randint(0, 60)})
            pid, cat, price = self._product()
            seen.append((pid, cat, price))
            t = self.emit(h, ch, "product_viewed", t, ids, {"page_url": f"/p/{pid}"},
                          {"product_id": pid, "category": cat, "price": price, "currency": "CNY"})
        # A cart's events carry the member id, or the device is the anonymous human's own.
        cart_ok = login_at >= 0 or (h.member_id is None and anon not in self.shared_anon)
        if cart_ok and r.random() < self.cfg.cart_rate:
            return self._cart(h, ch, ids, t, seen)
        return t

    def _cart(self, h: Human, ch: str, ids: dict[str, Any], t: int, seen: list[tuple[str, str, float]]) -> int:
        r, cart_id = self.rng, f"cart-{self.token(48)}"
        revenue, last_add = 0.0, t
        for pid, cat, price in r.sample(seen, r.randint(1, len(seen))):
            qty = r.choice((1, 1, 1, 2))
            revenue += price * qty
            last_add = t
            t = self.emit(h, ch, "product_added", t, ids, None, {"product_id": pid, "category": cat, "price": price,
                                                                "quantity": qty, "cart_id": cart_id, "currency": "CNY"})
        self.carts += 1
        if r.random() < self.cfg.cart_abandon_rate:
            self.abandoned.append(cart_id)
            return last_add + self.cfg.cart_abandon_delay_ms  # away long enough for the reminder to be due
        t = last_add + r.randint(30_000, 240_000)
        t = self.emit(h, ch, "checkout_started", t, ids, None, {"cart_id": cart_id, "value": revenue, "currency": "CNY"})
        return self._order(h, ch, ids, t, revenue, cart_id=cart_id)

    def _order(self, h: Human, ch: str, ids: dict[str, Any], t: int, revenue: float,
               cart_id: str | None = None, store_id: str | None = None, guide_id: str | None = None) -> int:
        self.orders, self.revenue = self.orders + 1, self.revenue + revenue
        props = {"order_id": f"O{self.token(48)}", "revenue": revenue, "currency": "CNY", "cart_id": cart_id}
        return self.emit(h, ch, "order_completed", t, ids, None, props, store_id=store_id, guide_id=guide_id)

    def _other_session(self, h: Human, ch: str, t: int) -> int:
        r, m = self.rng, h.member_id
        if ch == "store_pos":
            ids, store = {"member_id": m, "pos_card": f"C{m}"}, f"S{r.randrange(STORES):03d}"
            t = self.emit(h, ch, "store_visited", t, ids, store_id=store)
            guide = f"G{r.randrange(200):03d}" if r.random() < 0.5 else None
            if guide:
                t = self.emit(h, ch, "guide_chatted", t, ids, store_id=store, guide_id=guide)
            if r.random() < 0.4:
                t = self._order(h, ch, ids, t, self._product()[2], store_id=store, guide_id=guide)
            return t
        if ch == "marketplace":
            ids = {"platform_buyer_id": h.buyer_id}
            for _ in range(r.randint(1, 3)):
                pid, cat, price = self._product()
                t = self.emit(h, ch, "product_viewed", t, ids, None, {"product_id": pid, "category": cat, "price": price})
            return self._order(h, ch, ids, t, price) if r.random() < 0.3 else t
        if ch == "wechat_oa":
            ids = {"wechat_openid": h.openid, "member_id": m}
            if not h.followed:
                h.followed = True
                t = self.emit(h, ch, "wechat_followed", t, ids, None, {"account_id": OFFICIAL_ACCOUNT})
            t = self.emit(h, ch, "message_opened", t, ids, None, {"message_id": f"M{self.token(32)}",
                                                                  "message_channel": "wechat"})
            return self.emit(h, ch, "page_viewed", t, ids, {"page_url": f"/article/{r.randrange(90)}"})
        if ch == "customer_service":
            return self.emit(h, ch, "service_consulted", t, {"phone": h.phone, "member_id": m}, None,
                             {"medium": r.choice(("chat", "call")), "topic": r.choice(("size", "delivery", "refund"))})
        if ch == "partner":
            return self.emit(h, ch, "points_exchanged", t, {"member_id": m}, None,
                             {"points": r.choice((100, 200, 500)), "partner": r.choice(PARTNERS)},
                             referrer_id=f"kol-{r.randrange(30)}")
        ids = {"member_id": m, "phone": h.phone} if ch == "sms" else {"member_id": m, "email": f"{m}@example.com".lower()}
        msg = {"message_id": f"M{self.token(32)}", "message_channel": ch, "campaign_id": "double11"}
        t = self.emit(h, ch, "message_opened", t, ids, {"campaign": "double11"}, msg)
        return self.emit(h, ch, "message_clicked", t, ids, {"campaign": "double11"}, msg) if r.random() < 0.5 else t
