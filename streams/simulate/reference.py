"""Seeded reference data that fits the simulated traffic: stores, catalog, calendar, spend. Pure
(apart from ``write_reference_files``).

Consistent with ``journeys`` for the same ``SimConfig``:
- stores ``S000``..``S039``, the ids store-till sessions use, in the simulator's cities,
  all open before the traffic starts;
- products ``P00000``..: exactly the simulator's catalog (same ids, categories and
  prices, drawn as ``Journeys`` draws them from the config's seed), in CNY;
- campaigns: ``double11`` (the campaign id touchpoint contexts carry), with its
  warm-up, plus 618 and Double 12 of the same year;
- spend: every simulated day, per paid channel, under ``double11`` on its days
  and as always-on spend (no campaign) otherwise.

Its own random stream (seeded from the config's seed), so traffic stays
byte-identical whether or not reference data is generated.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

from streams.reference.rows import write_file
from streams.reference.view import day_of
from streams.simulate.journeys import CITIES, DAY_MS, STORES, catalog
from streams.simulate.traffic import SimConfig

CURRENCY = "CNY"
CITY_CENTRES = {  # approximate WGS84 centres
    "Shanghai": (31.2304, 121.4737), "Beijing": (39.9042, 116.4074), "Shenzhen": (22.5431, 114.0579),
    "Guangzhou": (23.1291, 113.2644), "Hangzhou": (30.2741, 120.1551), "Chengdu": (30.5728, 104.0668),
    "Wuhan": (30.5928, 114.3055),
}
PAID_CHANNELS = ("web", "app", "mini_program", "wechat_oa", "marketplace", "sms", "email", "partner")
TAGS = ("limited", "collab", "bestseller", "eco", "online-exclusive", "couple", "gift")
FILES = {"stores": "stores.csv", "products": "products.csv", "calendar": "calendar.jsonl", "spend": "spend.csv"}


def _date(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def stores(config: SimConfig, rng: random.Random) -> list[dict[str, Any]]:
    first_day = day_of(config.start_ms)
    out = []
    for i in range(STORES):
        city = CITIES[i % len(CITIES)]
        lat, lon = CITY_CENTRES.get(city, (31.2304, 121.4737))
        out.append({
            "store_id": f"S{i:03d}", "name": f"{city} store {i // len(CITIES) + 1}", "city": city,
            "latitude": round(lat + rng.uniform(-0.15, 0.15), 5), "longitude": round(lon + rng.uniform(-0.15, 0.15), 5),
            "opened_on": _date(first_day, -rng.randint(30, 8 * 365)), "closed_on": None,
        })
    return out


def products(config: SimConfig, rng: random.Random) -> list[dict[str, Any]]:
    first_day = day_of(config.start_ms)
    out = []
    for pid, category, price in catalog(random.Random(config.seed)):  # the simulator's own draw
        new = rng.random() < 0.15
        out.append({
            "product_id": pid, "name": f"{category.rsplit('/', 1)[-1].title()} {pid}", "category_path": category,
            "price": price, "currency": CURRENCY, "new_arrival": new,
            "tags": sorted(rng.sample(TAGS, rng.randint(0, 2))),
            "launched_on": _date(first_day, -rng.randint(1, 20) if new else -rng.randint(60, 3 * 365)),
        })
    return out


def campaigns(config: SimConfig) -> list[dict[str, Any]]:
    year = int(day_of(config.start_ms)[:4])
    return [
        {"campaign_id": "618", "name": "618", "warmup_starts_on": f"{year}-05-20", "starts_on": f"{year}-06-01",
         "ends_on": f"{year}-06-18", "channels": ["web", "app", "mini_program", "marketplace"]},
        {"campaign_id": "double11", "name": "Double 11", "warmup_starts_on": f"{year}-10-20",
         "starts_on": f"{year}-10-31", "ends_on": f"{year}-11-11", "channels": list(PAID_CHANNELS)},
        {"campaign_id": "double12", "name": "Double 12", "warmup_starts_on": f"{year}-12-08",
         "starts_on": f"{year}-12-10", "ends_on": f"{year}-12-12", "channels": ["marketplace", "mini_program"]},
    ]


def spend(config: SimConfig, rng: random.Random, calendar: list[dict[str, Any]]) -> list[dict[str, Any]]:
    double11 = next(c for c in calendar if c["campaign_id"] == "double11")
    out = []
    for d in range(config.days):
        day = day_of(config.start_ms + d * DAY_MS)
        in_campaign = (double11.get("warmup_starts_on") or double11["starts_on"]) <= day <= double11["ends_on"]
        for channel in PAID_CHANNELS:
            impressions = rng.randint(20_000, 400_000)
            clicks = int(impressions * rng.uniform(0.005, 0.04))
            leads = int(clicks * rng.uniform(0.02, 0.15))
            out.append({
                "day": day, "channel": channel, "campaign_id": "double11" if in_campaign else None,
                "amount": round(impressions * rng.uniform(0.01, 0.06), 2), "currency": CURRENCY,
                "impressions": impressions, "clicks": clicks, "leads": leads,
            })
    return out


def generate_reference(config: SimConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """Reference records per loader kind (``stores``, ``products``, ``calendar``, ``spend``)."""
    config = config or SimConfig()
    rng = random.Random(f"touchline-reference-{config.seed}")
    calendar = campaigns(config)
    return {"stores": stores(config, rng), "products": products(config, rng), "calendar": calendar,
            "spend": spend(config, rng, calendar)}


def write_reference_files(directory: Path | str, config: SimConfig | None = None,
                          names: dict[str, str] | None = None) -> dict[str, Path]:
    """Write the reference data as loader files; return kind -> path.

    Default names mix the formats (CSV, and JSON Lines for the calendar, whose
    channel lists read better as arrays); pass ``names`` (kind -> file name,
    ``.csv``/``.jsonl``, optionally ``.gz``) to choose. Each file loads with
    ``touchline load PATH --kind KIND``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = generate_reference(config)
    names = {**FILES, **(names or {})}
    return {kind: write_file(directory / names[kind], kind, records) for kind, records in data.items()}
