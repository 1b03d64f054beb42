"""Trigger definitions (pure): the built-ins load and behave, invalid files are rejected with
file, line and problem, and the expression language parses, types and evaluates as documented."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.features import profile
from streams.touchpoint import record
from streams.touchpoint.taxonomy import EVENT_TYPES
from streams.triggers import expr
from streams.triggers.definitions import BUILTIN_DIR, SCHEMA_PATH, Definition, DefinitionError, load
from streams.triggers.delivery import CHANNELS
from streams.triggers.vocabulary import FEATURES, calendar_now, roots
from tests.conftest import T0  # 2026-11-01T00:00:00+08:00

DAY = 86_400_000
BUILTINS = {"cart_abandon", "interest_shift", "browse_without_buying", "repurchase_due", "win_back",
            "online_to_offline"}
DOUBLE11 = {"campaign_id": "double11", "name": "Double 11", "starts_on": "2026-10-31", "ends_on": "2026-11-11",
            "warmup_starts_on": "2026-10-20", "channels": []}
SALE618 = {"campaign_id": "618", "name": "618", "starts_on": "2027-06-01", "ends_on": "2027-06-18",
           "warmup_starts_on": "2027-05-20", "channels": []}


@pytest.fixture(scope="module")
def builtins() -> dict[str, Definition]:
    return load(BUILTIN_DIR)


def event(kind: str, t: int = T0, **props: Any) -> dict[str, Any]:
    return record.build(f"e-{kind}", kind, t, "web", properties_=props or None)


# ---------------------------------------------------------------------------- the built-ins

def test_every_builtin_loads_named_after_its_file(builtins: dict[str, Definition]) -> None:
    assert set(builtins) == BUILTINS
    for d in builtins.values():
        assert Path(d.file).stem == d.name and d.line == 1
        assert set(d.terms.channels) <= set(CHANNELS)
        assert d.description


def test_the_declared_features_are_the_ones_the_builtins_use(builtins: dict[str, Definition]) -> None:
    used = set().union(*(d.features for d in builtins.values()))
    assert used == set(FEATURES)


# Declared for the built-ins, not in the features snapshot yet: remove each as the features core publishes it.
NOT_PUBLISHED_YET = {"interest_category"}


def test_the_features_snapshot_publishes_the_declared_features() -> None:
    tp = record.build("e1", "page_viewed", T0, "web", context={"city": "Shanghai"})
    state = profile.apply(profile.empty("p-1"), {"person_id": "p-1", "member_id": None, "processed_at_ms": T0,
                                                 "raw_partition": 0, "raw_offset": 0, "touchpoint": tp})
    snapshot = profile.snapshot(state, T0)
    assert set(FEATURES) - set(snapshot) == NOT_PUBLISHED_YET
    touch = FEATURES["first_touch"][0]
    assert isinstance(touch, expr.Record) and set(snapshot["first_touch"]) <= set(touch.fields)


def test_the_published_schema_is_valid_and_names_the_codes_event_types_and_channels() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["$defs"]["events"]["items"]["enum"]) == EVENT_TYPES
    assert tuple(schema["properties"]["channels"]["items"]["enum"]) == CHANNELS
    assert schema["$defs"]["duration"]["pattern"] == f"^{expr.DURATION_RE.pattern}$"


def test_cart_abandon_waits_per_cart_and_is_cancelled_by_its_checkout_or_any_order(
        builtins: dict[str, Definition]) -> None:
    d = builtins["cart_abandon"]
    add = event("product_added", cart_id="c1", product_id="P1")
    assert d.starts({"event": add}) and d.key_of({"event": add}) == "c1"
    assert d.payload_of({"event": add}) == {"cart_id": "c1"}
    assert d.wait is not None and d.wait.for_ms == 30 * 60_000
    assert {n: e({"event": add}) for n, e in d.wait.collect.items()} == {"items": "P1"}
    assert not d.starts({"event": event("product_viewed", product_id="P1")})
    assert d.cancels(event("checkout_started", cart_id="c1"), "c1")
    assert not d.cancels(event("checkout_started", cart_id="c2"), "c1")
    assert d.cancels(event("order_completed", order_id="o1"), "c1")
    assert not d.cancels(event("page_viewed"), "c1")


SHIFTED = {"interest_shift": True, "interest_divergence": 0.37, "interest_category": "women/fashion"}
BROWSER = {"browse_without_buying": True}
DUE = {"next_purchase_ms": T0 + DAY, "p_alive": 0.8, "expected_purchases_30d": 0.9}
QUIET = {"revenue_total": 5200.0, "days_since_last_order": 75, "p_alive": 0.4, "last_order_ms": T0 - 75 * DAY}
NEWCOMER = {"city_store": "S001", "channels": {"mini_program": {"first_seen_ms": T0}},
            "first_touch": {"channel": "mini_program", "entry": "kol"}, "lifecycle": "new", "city": "Shanghai"}
WARMUP = T0 - 5 * DAY  # 2026-10-27: Double 11 warm-up, sale in 4 days


@pytest.mark.parametrize("rule, kind, features, now, fires", [
    ("interest_shift", "product_viewed", SHIFTED, T0, True),
    ("interest_shift", "product_viewed", {**SHIFTED, "interest_shift": False}, T0, False),
    ("interest_shift", "product_viewed", {}, T0, False),  # no features yet: unknown, not fired
    ("interest_shift", "order_completed", SHIFTED, T0, False),
    ("browse_without_buying", "page_viewed", BROWSER, WARMUP, True),
    ("browse_without_buying", "page_viewed", {"browse_without_buying": False}, WARMUP, False),
    ("browse_without_buying", "page_viewed", BROWSER, T0 - 40 * DAY, False),  # sale 40 days away
    ("browse_without_buying", "page_viewed", BROWSER, T0 + 2 * DAY, False),  # sale running
    ("repurchase_due", None, DUE, T0, True),
    ("repurchase_due", None, {**DUE, "next_purchase_ms": T0 + 5 * DAY}, T0, False),
    ("repurchase_due", None, {**DUE, "p_alive": 0.2}, T0, False),
    ("win_back", None, QUIET, T0, True),
    ("win_back", None, {**QUIET, "revenue_total": 300.0}, T0, False),
    ("win_back", None, {**QUIET, "days_since_last_order": 20}, T0, False),
    ("online_to_offline", None, NEWCOMER, T0, True),
    ("online_to_offline", None, {**NEWCOMER, "lifecycle": "active"}, T0, False),
    ("online_to_offline", None, {**NEWCOMER, "lifecycle": "active", "city_store_opened_ms": T0 - 3 * DAY}, T0,
     True),
    ("online_to_offline", None, {**NEWCOMER, "city_store": None}, T0, False),
    ("online_to_offline", None, {**NEWCOMER, "channels": {"store_pos": {"first_seen_ms": T0}}}, T0, False),
    ("online_to_offline", None, {**NEWCOMER, "first_touch": {"channel": "store_pos"}}, T0, False),
])
def test_builtin_conditions(builtins: dict[str, Definition], rule: str, kind: str | None,
                            features: dict[str, Any], now: int, fires: bool) -> None:
    d = builtins[rule]
    context = {"features": features, "calendar": calendar_now([DOUBLE11, SALE618], now), "now": now}
    if kind is not None:
        context["event"] = event(kind)
    assert d.starts(context) is fires
    if fires:
        assert d.key_of(context) is not None
        assert d.evidence(context)


def test_keys_payloads_and_evidence_of_builtins(builtins: dict[str, Definition]) -> None:
    shift = {"event": event("product_viewed"), "features": SHIFTED, "now": T0}
    assert builtins["interest_shift"].key_of(shift) == "women/fashion"
    assert builtins["interest_shift"].payload_of(shift) == {"category": "women/fashion", "divergence": "0.37"}
    assert builtins["interest_shift"].evidence(shift) == {
        "features.interest_shift": "true", "features.interest_category": "women/fashion"}
    browse = {"event": event("page_viewed"), "features": BROWSER, "calendar": calendar_now([DOUBLE11], WARMUP)}
    assert builtins["browse_without_buying"].key_of(browse) == "double11"
    store = {"features": NEWCOMER, "now": T0}
    assert builtins["online_to_offline"].payload_of(store) == {"store_id": "S001", "city": "Shanghai"}
    assert builtins["repurchase_due"].key_of({"features": DUE, "now": T0}) == str(T0 + DAY)


def test_calendar_is_the_next_campaign_that_has_not_ended() -> None:
    assert calendar_now([], T0) == {}
    assert calendar_now([DOUBLE11, SALE618], T0 - 20 * DAY) == {
        "campaign_id": "double11", "phase": "upcoming", "starts_in": 19 * DAY}
    assert calendar_now([DOUBLE11, SALE618], WARMUP)["phase"] == "warmup"
    running = calendar_now([DOUBLE11, SALE618], T0 + DAY)
    assert running["phase"] == "sale" and running["starts_in"] == -2 * DAY
    assert calendar_now([DOUBLE11, SALE618], T0 + 11 * DAY)["campaign_id"] == "618"


# ---------------------------------------------------------------------------- invalid files

BASE = """\
name: t
description: a test trigger
start:
  events: [product_added]
  when: event.channel == 'web'
key: event.properties.cart.cart_id
priority: 10
channels: [sms]
"""


INVALID = [
    ("name: [\n", 2, "not valid YAML"),
    ("", 1, "empty: a trigger definition is a YAML mapping"),
    ("- just\n- a list\n", 1, "is not of type 'object'"),
    (BASE + "priority: 5\n", 9, "key 'priority' repeated (first at line 7)"),
    (BASE.replace("key: event.properties.cart.cart_id\n", ""), 1, "'key' is a required property"),
    (BASE + "suppres_for: 1d\n", 9, "unknown key 'suppres_for' (did you mean 'suppress_for'?)"),
    (BASE.replace("[product_added]", "[product_addded]"), 4,
     "start.events[0]: 'product_addded' is not known (did you mean 'product_added'?)"),
    (BASE.replace("[sms]", "[sms, fax]"), 8, "channels[1]: 'fax' is not known"),
    (BASE.replace("[sms]", "[]"), 8, "channels: [] should be non-empty"),
    (BASE + "suppress_for: 1 day\n", 9, "suppress_for: '1 day' does not fit: a whole number and a unit"),
    (BASE.replace("priority: 10", "priority: 101"), 7, "priority: 101 is greater than the maximum of 100"),
    (BASE.replace("priority: 10", "priority: high"), 7, "priority: 'high' is not of type 'integer'"),
    (BASE + "holdout: 0.9\n", 9, "holdout: 0.9 is greater than the maximum of 0.5"),
    (BASE.replace("  events: [product_added]\n  when: event.channel == 'web'\n", "  {}\n"), 3,
     "start: must not be empty"),
    (BASE + "payload:\n  Cart: event.properties.cart.cart_id\n", 10, "payload: 'Cart' does not fit"),
    (BASE.replace("name: t", "name: other"), 1, "name: 'other' must be the file's name, 't'"),
    (BASE.replace("== 'web'", "=="), 5, "start.when: expected a value, found 'the end' (column 17"),
    (BASE.replace("event.channel ==", "evnt.channel =="), 5, "unknown name 'evnt' (did you mean 'event'?)"),
    (BASE.replace("event.channel ==", "event.chanel =="), 5,
     "event has no field 'chanel' (did you mean 'channel'?) (column 7"),
    (BASE.replace("'web'", "3"), 5, "cannot compare string with number (column 15"),
    (BASE.replace("event.channel == 'web'", "features.p_alive"), 5, "start.when: needs bool, but this is number"),
    (BASE.replace("  events: [product_added]\n", ""), 4, "unknown name 'event'"),
    (BASE.replace("when: event.channel == 'web'", "when: >\n    event.channel == 'web'\n    and features.p_alive > 'x'"),
     7, "cannot compare number with string"),
    (BASE.replace("key: event.properties.cart.cart_id", "key: event.channel == 'web'"), 6, "key: must be a path"),
    (BASE.replace("key: event.properties.cart.cart_id", "key: event.properties"), 6,
     "key: must be a single string or number or time value; 'event.properties' is a record Properties"),
    (BASE + "payload:\n  phone: event.identifiers.phone\n", 10, "personal data: it never goes into a trigger record"),
    (BASE + "wait:\n  for: 30m\n  cancel:\n    - events: [order_completed]\n      key: event.event_time_ms\n", 13,
     "wait.cancel[0].key: is a time, the trigger's key a string: they never match"),
    (BASE + "payload:\n  items: event.event_id\nwait:\n  for: 1h\n  collect:\n    items: event.event_id\n", 14,
     "wait.collect.items: 'items' is also a payload field"),
]


@pytest.mark.parametrize("text, line, problem", INVALID, ids=[p for _, _, p in INVALID])
def test_an_invalid_file_is_rejected_naming_file_line_and_problem(tmp_path: Path, text: str, line: int,
                                                                  problem: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(DefinitionError) as raised:
        load(tmp_path)
    assert f"{path}:{line}: " in str(raised.value)
    assert problem in str(raised.value)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(BASE.replace("[sms]", "[fax]").replace("priority: 10", "priority: -1"))
    with pytest.raises(DefinitionError) as raised:
        load(tmp_path)
    assert [p.line for p in raised.value.problems] == [7, 8]


def test_a_new_trigger_is_a_new_file_and_a_name_is_defined_once(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(BASE)
    defs = load(BUILTIN_DIR, tmp_path)
    assert set(defs) == BUILTINS | {"t"}
    assert defs["t"].starts({"event": event("product_added", cart_id="c", product_id="p")})
    shutil.copy(BUILTIN_DIR / "cart_abandon.yaml", tmp_path / "cart_abandon.yaml")
    with pytest.raises(DefinitionError, match=f"{tmp_path}/cart_abandon.yaml:1: trigger 'cart_abandon' is "
                                              f"already defined at {BUILTIN_DIR}/cart_abandon.yaml:1"):
        load(BUILTIN_DIR, tmp_path)
    with pytest.raises(DefinitionError, match="no such directory"):
        load(tmp_path / "missing")


# ---------------------------------------------------------------------------- the expression language

ROOTS = roots(with_event=True)
CTX = {
    "event": event("order_completed", T0, order_id="o1", revenue=420.0, products=[{"product_id": "P1"}]),
    "features": {"lifecycle": "active", "p_alive": 0.7, "last_order_ms": T0 - 40 * DAY, "days_since_last_order": 2},
    "now": T0,
}


@pytest.mark.parametrize("source, value", [
    ("event.properties.order.revenue >= 400", True),
    ("event.type == 'order_completed' and event.channel in ['web', 'app']", True),
    ("event.channel not in [\"web\"]", False),
    ("features.lifecycle != 'new' or features.p_alive < 0.1", True),
    ("not (features.days_since_last_order > 1)", False),
    ("now - features.last_order_ms >= 30d", True),
    ("features.last_order_ms + 40d == now", True),
    ("features.days_since_last_order + 1 == 3 and -1 < features.days_since_last_order", True),
    ("1d + 12h == 36h and 90s == 1500ms + 88500ms", True),
    ("'it\\'s' == \"it's\"", True),
    ("features.city == null and event.context == null", True),
    ("features.lifecycle != null", True),
    # three-valued logic: a missing value is unknown, not false
    ("features.city == 'Shanghai'", None),
    ("not (features.city == 'Shanghai')", None),
    ("features.city == 'Shanghai' and features.p_alive > 0.9", False),
    ("features.city == 'Shanghai' or features.p_alive > 0.5", True),
    ("features.city in ['Shanghai']", None),
    ("features.city_store_opened_ms >= now - 30d", None),
])
def test_expressions_evaluate(source: str, value: bool | None) -> None:
    assert expr.compile(source, ROOTS, expr.BOOL)(CTX) is value


@pytest.mark.parametrize("source, column, message", [
    ("event.type ==", 14, "expected a value"),
    ("event.type == 'a", 15, "unexpected \"'\""),
    ("(event.type == 'a'", 19, "expected ')'"),
    ("event.type == 'a' 'b'", 19, "unexpected \"'b'\""),
    ("3.5d > now", 1, "'3.5d' is neither a number"),
    ("event.type = 'a'", 12, "unexpected '='"),
    ("[1] == 1", 1, "a list goes after 'in'"),
    ("-'a' == 'a'", 1, "'-' goes right before a number or a duration"),
    ("- 1 == 1", 1, "'-' goes right before a number or a duration"),
    ("person.city == 'x'", 1, "unknown name 'person'"),
    ("event.properties.cart.cartid == 'x'", 23, "event.properties.cart has no field 'cartid' (did you mean 'cart_id'?)"),
    ("event.type.name == 'x'", 12, "event.type is a string, it has no field 'name'"),
    ("features.p_alive > '0.5'", 18, "cannot compare number with string"),
    ("now > 3d", 5, "cannot compare time with duration"),
    ("now + now > now", 5, "cannot compute time + time"),
    ("features.p_alive < null", 18, "null can only be compared with == or !="),
    ("features.lifecycle in [1, 'a']", 23, "a list holds literals of one type"),
    ("features.lifecycle in features.city", 23, "'in' needs a list, not string"),
    ("features.p_alive in ['a']", 18, "cannot look for number in a list of string"),
    ("event.properties < event.properties", 18, "cannot compare record Properties with record Properties"),
    ("true < false", 6, "bool values have no order"),
    ("features.p_alive and true", 1, "'and' needs bool, not number"),
    ("not features.lifecycle", 5, "'not' needs bool, not string"),
    ("features.p_alive + 1", 18, "needs bool, but this is number"),
    ("not " * 5000 + "true", 1, "nested too deeply"),
])
def test_expression_errors_name_the_problem_and_column(source: str, column: int, message: str) -> None:
    with pytest.raises(expr.ExprError) as raised:
        expr.compile(source, ROOTS, expr.BOOL)
    assert raised.value.pos + 1 == column
    assert message in raised.value.message


def test_a_value_of_the_wrong_type_at_run_time_reads_as_unknown() -> None:
    e = expr.compile("features.p_alive > 0.5", ROOTS, expr.BOOL)
    assert e({"features": {"p_alive": "high"}}) is None
    declared = {"features": expr.Record("features", {"lifecycle": expr.STRING, "cities": expr.ListOf(expr.STRING)})}
    e = expr.compile("features.lifecycle in features.cities", declared, expr.BOOL)
    assert e({"features": {"lifecycle": "new", "cities": ["new"]}}) is True
    assert e({"features": {"lifecycle": "new", "cities": "new"}}) is None


PIECES = ["event.channel", "features.p_alive", "features.lifecycle", "now", "calendar.starts_in", "3d", "-", "+",
          "0.5", "'web'", "==", "<", "in", "not", "and", "or", "(", ")", "[", "]", ",", "null", "true", "1.5x"]


@given(st.one_of(st.text(max_size=40), st.lists(st.sampled_from(PIECES), max_size=12).map(" ".join)))
def test_any_text_compiles_or_is_an_expression_error(source: str) -> None:
    try:
        expr.compile(source, ROOTS)
    except expr.ExprError as exc:
        assert 0 <= exc.pos <= len(source)


@given(st.integers(min_value=0, max_value=10**12))
def test_durations_read_back(ms: int) -> None:
    assert expr.parse_duration(expr.format_duration(ms)) == ms


NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(lambda n: n not in expr.KEYWORDS)
SCALAR = st.one_of(
    st.integers(-10**6, 10**6).map(lambda n: expr.Literal(n, expr.NUMBER)),
    st.integers(-10**6, 10**6).map(lambda n: expr.Literal(n / 100, expr.NUMBER)),
    st.integers(-10**6, 10**6).map(lambda n: expr.Literal(n * 1000, expr.DURATION)),
    st.text(max_size=8).map(lambda s: expr.Literal(s, expr.STRING)),
    st.booleans().map(lambda b: expr.Literal(b, expr.BOOL)),
    st.just(expr.Literal(None, expr.NULL)),
)
LEAF = st.one_of(SCALAR, st.lists(NAMES, min_size=1, max_size=4).map(lambda n: expr.Path(tuple(n))))


def _compound(children: st.SearchStrategy[expr.Node]) -> st.SearchStrategy[expr.Node]:
    return st.one_of(
        children.map(expr.Not),
        st.builds(expr.BoolOp, st.sampled_from(["and", "or"]), st.lists(children, min_size=2, max_size=3).map(tuple)),
        st.builds(expr.Binary, st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "+", "-"]), children, children),
        st.builds(expr.In, children, st.one_of(children, st.lists(SCALAR, max_size=3).map(
            lambda items: expr.ListLit(tuple(items)))), st.booleans()),
    )


@given(st.recursive(LEAF, _compound, max_leaves=12))
def test_printing_a_tree_and_parsing_it_back_gives_the_same_tree(node: expr.Node) -> None:
    assert expr.parse(str(node)) == node
