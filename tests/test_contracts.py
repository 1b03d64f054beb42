"""The Avro contracts in schemas/, the Confluent wire format, the topic registry and the CLI.

Sample records are generated from the schemas themselves, so these tests keep
holding (and keep checking) as contracts evolve.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import avro
from streams.cli import build_parser
from streams.topics import ALL_TOPICS, partition_for

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILES = sorted((ROOT / "schemas").glob("*.avsc"))
TOPIC_SCHEMAS = sorted({t.schema for t in ALL_TOPICS})


def test_schema_dir_is_the_repositorys() -> None:
    assert avro.SCHEMA_DIR.resolve() == (ROOT / "schemas").resolve()
    assert SCHEMA_FILES, "no contracts"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_file_is_named_after_its_full_name_and_parses(path: Path) -> None:
    raw = json.loads(path.read_text())
    assert raw["type"] == "record"
    full = f"{raw['namespace']}.{raw['name']}" if "namespace" in raw else raw["name"]
    assert path.name == f"{full}.avsc"
    c = avro.contract(full)
    assert c.name == full and 0 <= c.schema_id < 2**31
    assert c.parsed["name"] == full


def test_schema_ids_are_unique_and_stable() -> None:
    names = avro.all_contract_names()
    assert names == [p.stem for p in SCHEMA_FILES]
    ids = {n: avro.contract(n).schema_id for n in names}
    assert len(set(ids.values())) == len(ids), "two contracts share a schema id"
    # Computed again, bypassing the cache ...
    assert {n: avro.contract.__wrapped__(n).schema_id for n in names} == ids
    # ... and in another process (another hash seed): every worker must agree without a registry.
    code = "import json; from streams import avro; print(json.dumps({n: avro.contract(n).schema_id for n in avro.all_contract_names()}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout) == ids


def test_every_contract_name_used_in_code_has_a_file() -> None:
    names = [avro.TOUCHPOINT, avro.ENRICHED, avro.DEAD_LETTER, avro.IDENTITY_CHANGE, avro.MEMBER_FEATURES,
             avro.TRIGGER, avro.INGESTED_BATCH, avro.PERSON_BATCH]
    for name in names:
        assert (avro.SCHEMA_DIR / f"{name}.avsc").is_file(), name


# --------------------------------------------------------------------------- records from a schema

PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=16),
    "string": st.text(max_size=8),
}


def records_of(schema: Any, named: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """A strategy for values of a fastavro-parsed schema (named types are defined at first use)."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return PRIMITIVES[schema]
        return st.deferred(lambda: records_of(named[schema], named))
    if isinstance(schema, list):
        return st.one_of([records_of(s, named) for s in schema])
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return st.fixed_dictionaries({f["name"]: records_of(f["type"], named) for f in schema["fields"]})
    if kind == "array":
        return st.lists(records_of(schema["items"], named), max_size=2)
    if kind == "map":
        return st.dictionaries(st.text(max_size=5), records_of(schema["values"], named), max_size=2)
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        named[schema["name"]] = schema
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    return records_of(kind, named)


@pytest.mark.parametrize("name", TOPIC_SCHEMAS)
def test_topic_contracts_roundtrip(name: str) -> None:
    strategy = records_of(avro.contract(name).parsed)

    @FAST
    @given(strategy)
    def roundtrip(record: dict[str, Any]) -> None:
        data = avro.encode(name, record)
        assert data[0] == avro.MAGIC
        assert struct.unpack(">I", data[1:5])[0] == avro.contract(name).schema_id
        assert avro.decode(data) == (name, record)
        assert avro.decode_as(name, data) == record

    roundtrip()


# --------------------------------------------------------------------------- decode errors

def _trigger() -> bytes:
    return avro.encode(avro.TRIGGER, {
        "trigger_id": "t1", "rule": "cart_abandon", "person_id": "p-1", "member_id": None,
        "correlation_key": "k1", "source_event_id": "e1", "due_at_ms": 1, "fired_at_ms": 2, "payload": {"a": "b"},
    })


def _unused_id() -> int:
    used = {c.schema_id for c in avro.iter_contracts()}
    return next(i for i in range(1, 1000) if i not in used)


@pytest.mark.parametrize(("data", "reason"), [
    (None, "not_wire_format"),
    (b"", "not_wire_format"),
    (b"\x00\x00\x00\x01", "not_wire_format"),  # shorter than the header
    (b"\x01" + _trigger()[1:], "not_wire_format"),  # wrong magic byte
    (b'{"trigger_id": "t1"}', "not_wire_format"),  # JSON, not Avro
    (struct.pack(">bI", 0, _unused_id()) + _trigger()[5:], "unknown_schema"),
    (_trigger()[:5] + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "avro_decode_error"),  # absurd length
    (_trigger()[:-3], "avro_decode_error"),  # truncated body
    (_trigger() + b"\x00", "avro_decode_error"),  # trailing bytes
])
def test_decode_reasons(data: bytes | None, reason: str) -> None:
    with pytest.raises(avro.WireFormatError) as info:
        avro.decode(data)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{reason}: ")


def test_decode_wrong_schema_only_when_a_contract_is_expected() -> None:
    data = _trigger()
    assert avro.decode(data)[0] == avro.TRIGGER
    assert avro.decode(data, expect=avro.TRIGGER)[1]["correlation_key"] == "k1"
    with pytest.raises(avro.WireFormatError) as info:
        avro.decode_as(avro.TOUCHPOINT, data)
    assert info.value.reason == "wrong_schema"
    assert avro.TRIGGER in info.value.detail and avro.TOUCHPOINT in info.value.detail


def test_encode_refuses_records_that_break_the_contract() -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        avro.encode(avro.TRIGGER, {"trigger_id": "t1"})


# --------------------------------------------------------------------------- topics

def test_every_topic_has_a_schema_file_and_a_unique_name() -> None:
    for spec in ALL_TOPICS:
        assert (avro.SCHEMA_DIR / f"{spec.schema}.avsc").is_file(), spec.suffix
        avro.contract(spec.schema)
    suffixes = [t.suffix for t in ALL_TOPICS]
    assert len(set(suffixes)) == len(suffixes)
    from streams.settings import Settings

    s = Settings(topic_prefix="tl")
    names = [t.name(s) for t in ALL_TOPICS]
    assert len(set(names)) == len(names)
    for n in names:
        assert len(n) <= 249 and all(ch.isalnum() or ch in "._-" for ch in n), n
        assert n.startswith("tl.")


@given(st.text(max_size=30), st.integers(1, 64))
@FAST
def test_partition_for_is_stable_and_in_range(key: str, partitions: int) -> None:
    p = partition_for(key, partitions)
    assert 0 <= p < partitions and p == partition_for(key, partitions)


def test_partition_for_is_pinned() -> None:
    # Routing must not change between releases: events of one cookie must keep meeting its links.
    import zlib

    for key in ("anonymous_id:c1", "device_id:d9", "member_id:M1"):
        assert partition_for(key, 4) == zlib.crc32(key.encode()) % 4


# --------------------------------------------------------------------------- CLI

def _subcommands() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    assert len(actions) == 1
    return set(actions[0].choices)  # type: ignore[arg-type]


def _deploy_constant() -> set[str]:
    module = sys.modules.get("test_deploy")
    if module is None:
        spec = importlib.util.spec_from_file_location("test_deploy", ROOT / "tests" / "test_deploy.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return set(module.CLI_SUBCOMMANDS)


def test_cli_has_exactly_the_subcommands_deploy_expects() -> None:
    expected = {"run", "worker", "sink", "simulate", "migrate", "topics", "broker", "report", "bench", "faults", "load", "schemas", "collect", "import", "dlq", "profile", "fit-purchase-model", "erase"}
    assert _subcommands() == expected
    assert _deploy_constant() == expected


def test_cli_help_and_required_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2
    args = build_parser().parse_args(["worker", "--id", "3"])
    assert (args.command, args.id) == ("worker", 3)
