"""The HTTP collector: ``POST /v1/batch`` of JSON touchpoints, acknowledged after Kafka.

``core.py`` turns a request (auth header, body, time) into per-event results,
raw records and dead letters, with no I/O; ``delivery.py`` produces records
and awaits Kafka's acknowledgements on the asyncio loop; ``app.py`` is the
aiohttp shell (routes, metrics, ``touchline collect``).
"""
