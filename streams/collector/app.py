"""The collector's aiohttp shell: routes, Kafka delivery, metrics, lifecycle.

- ``POST /v1/batch``: write-key auth, body limit, ``core.plan_batch``, produce the
  raw records and dead letters, answer once Kafka acknowledged all of them
  (200), or 503 with ``"retry": true`` when it did not;
- ``GET /healthz``;
- ``GET /metrics``: Prometheus.

``serve`` runs it in the foreground (``touchline collect``) until SIGTERM/SIGINT;
``CollectorThread`` runs it on a loop of its own (tests, embedding).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import metrics
from streams.clock import Clock, SystemClock
from streams.collector.core import HttpError, Limits, Plan, WriteKeyError, WriteKeys, plan_batch
from streams.collector.delivery import Delivery, DeliveryFailed
from streams.deadletter.sealing import Sealer
from streams.ingest.service import policy_from
from streams.settings import Settings
from streams.topics import DEAD_LETTERS, RAW

UNAUTHORIZED = HttpError(401, "unauthorized", "a valid write key is required: HTTP Basic with the write key as "
                         "user name and an empty password, or 'Authorization: Bearer <write key>'")


class Collector:
    def __init__(self, settings: Settings, delivery: Delivery, clock: Clock | None = None) -> None:
        self.settings = settings
        self.keys = WriteKeys.parse(settings.collector_write_keys)
        self.profile_keys = WriteKeys.parse(settings.collector_profile_keys)
        if not self.keys.sources:
            raise WriteKeyError("TOUCHLINE_COLLECTOR_WRITE_KEYS is empty: every request would be refused")
        self.clock = clock or SystemClock()
        self.delivery = delivery
        self.policy = policy_from(settings)
        self.sealer = Sealer.from_settings(settings)
        self.limits = Limits(settings.collector_max_body_bytes, settings.collector_max_batch)
        self.raw_topic, self.dead_letter_topic = RAW.name(settings), DEAD_LETTERS.name(settings)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/batch", self.batch)
        app.router.add_get("/v1/profiles", self.profiles)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def batch(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await self._batch(request)
        finally:
            metrics.COLLECTOR_REQUEST_SECONDS.observe(time.perf_counter() - started)

    async def _batch(self, request: web.Request) -> web.Response:
        source = self.keys.source_for(request.headers.get("Authorization"))
        if source is None:
            return _error(UNAUTHORIZED, "unknown", {"WWW-Authenticate": 'Basic realm="touchline"'})
        body = await _read_body(request, self.limits.max_body_bytes)
        if body is None:
            return _error(HttpError(413, "body_too_large", f"request body is larger than "
                                    f"{self.limits.max_body_bytes} bytes"), source)
        plan = plan_batch(body, source, self.clock.now_ms(), self.policy, self.sealer, self.limits)
        if isinstance(plan, HttpError):
            return _error(plan, source)
        records = [(self.raw_topic, a.key, a.value) for a in plan.accepted]
        records += [(self.dead_letter_topic, d.key, d.value) for d in plan.rejected]
        try:
            await self.delivery.send(records)
        except DeliveryFailed as exc:
            metrics.COLLECTOR_REQUESTS.labels(source, "503").inc()
            return web.json_response({"error": "kafka_unavailable", "message": str(exc), "retry": True},
                                     status=503, headers={"Retry-After": "1"})
        _count(plan)
        metrics.COLLECTOR_REQUESTS.labels(source, "200").inc()
        return web.json_response(plan.response())

    async def profiles(self, request: web.Request) -> web.Response:
        """GET /v1/profiles?identifier=type:value: the person, their identifiers (personal ones
        hashed) and merge history, for readers holding a TOUCHLINE_COLLECTOR_PROFILE_KEYS key."""
        from streams.identity.profile import BadIdentifier, lookup_for
        from streams.sink.query import QueryError

        if not self.profile_keys.sources:
            return web.json_response({"error": "not_enabled", "message": "no profile keys configured"}, status=404)
        if self.profile_keys.source_for(request.headers.get("Authorization")) is None:
            return web.json_response({"error": "unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="touchline"'})
        identifier = request.query.get("identifier", "")
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                None, lambda: lookup_for(self.settings, identifier, open_directly=False))
        except BadIdentifier as exc:
            return web.json_response({"error": "bad_identifier", "message": str(exc)}, status=400)
        except QueryError as exc:
            return web.json_response({"error": "clickhouse_unavailable", "message": str(exc), "retry": True},
                                     status=503, headers={"Retry-After": "1"})
        if found is None:
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response(found)

    async def healthz(self, request: web.Request) -> web.Response:
        ok = self.delivery.alive
        return web.json_response({"status": "ok" if ok else "kafka producer stopped"}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


def _error(err: HttpError, source: str, headers: dict[str, str] | None = None) -> web.Response:
    metrics.COLLECTOR_REQUESTS.labels(source, str(err.status)).inc()
    return web.json_response(err.body(), status=err.status, headers=headers)


def _count(plan: Plan) -> None:
    for a in plan.accepted:
        metrics.COLLECTOR_EVENTS.labels(plan.source, a.channel, a.type, "accepted", "").inc()
    for d in plan.rejected:
        metrics.COLLECTOR_EVENTS.labels(plan.source, d.channel, d.type, "dead_letter", d.reason).inc()
        metrics.DEAD_LETTERS.labels(d.reason).inc()


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- lifecycle

@dataclass
class Running:
    runner: web.AppRunner
    delivery: Delivery
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()  # stop accepting; let requests in flight finish
        self.delivery.close()  # then flush what they produced


async def start(settings: Settings, clock: Clock | None = None, host: str = "0.0.0.0",
                port: int | None = None) -> Running:
    delivery = Delivery(settings)
    try:
        collector = Collector(settings, delivery, clock)
        runner = web.AppRunner(collector.app(), access_log=None, shutdown_timeout=settings.collector_delivery_timeout_s + 5)
        await runner.setup()
        site = web.TCPSite(runner, host, settings.collector_port if port is None else port)
        await site.start()
    except BaseException:
        delivery.close(1.0)
        raise
    return Running(runner, delivery, int(runner.addresses[0][1]))


def serve(settings: Settings, clock: Clock | None = None) -> int:
    """``touchline collect``: serve until SIGTERM or SIGINT, then drain and flush."""

    async def main() -> None:
        running = await start(settings, clock)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"collector listening on 0.0.0.0:{running.port} (POST /v1/batch, /healthz, /metrics)", flush=True)
        await stop.wait()
        await running.stop()

    asyncio.run(main())
    return 0


class CollectorThread:
    """The collector on an event loop of its own thread; ``stop`` drains and flushes."""

    def __init__(self, settings: Settings, clock: Clock | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings, self.clock, self.host, self.port = settings, clock, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> CollectorThread:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                running = loop.run_until_complete(start(self.settings, self.clock, self.host, self.port))
            except BaseException as exc:
                self._error = exc
                ready.set()
                loop.close()
                return
            self.port = running.port
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(running.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="touchline-collector", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError("the collector did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._thread is None or self._loop is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> CollectorThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
