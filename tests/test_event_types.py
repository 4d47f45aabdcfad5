"""One list of event types (docs/decisions/0029): the contract's ``EventType`` enum is the source.

The members and wire numbers come from the generated descriptor (``common_pb2.EventType``), the
compact variant letters from the enum's comments in common.proto. Every other list of event types
is compared with them here: each comparison is an equality of whole mappings keyed by member, so
a list that gains or loses a member, renumbers one or gives it another letter fails its case.
The lists read from text (the proto's comments, the schema snapshot, the database's constraint,
the Node sources) go through small parsers; the last tests show that those parsers see a gained
or a lost member, so that a parser returning a fixed answer cannot hide a drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from engine_service.core import event_codec
from engine_service.core.events import EVENT_TYPES
from flowledger import _wire
from flowledger import types as t
from flowledger.v1 import common_pb2
from flowledger_core import domain
from flowledger_core.wire import store as store_wire
from store_service.adapters.postgres.schema_dump import committed_snapshot

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "protos" / "flowledger" / "v1" / "common.proto"
NODE = ROOT / "clients" / "node"
PREFIX = "EVENT_TYPE_"

# -- the source -----------------------------------------------------------------------------------

# Member name without the prefix -> wire number, in wire order; UNSPECIFIED is never stored.
NUMBERS: dict[str, int] = {
    name.removeprefix(PREFIX): number
    for name, number in common_pb2.EventType.items()
    if number != common_pb2.EVENT_TYPE_UNSPECIFIED
}
STORED: dict[str, str] = {name: name.lower() for name in NUMBERS}  # event_log.event_type
KINDS: dict[str, str] = {  # a payload's "kind": the engine's class name
    name: "".join(word.capitalize() for word in name.split("_")) for name in NUMBERS
}


def proto_variants(text: str) -> dict[str, str]:
    """Member -> the letter its comment in ``enum EventType`` names (``... variant "F".``)."""
    block = re.search(r"^enum EventType \{\n(.*?)^\}", text, re.M | re.S)
    assert block is not None, "no enum EventType in common.proto"
    letters: dict[str, str] = {}
    comment = ""
    for line in block.group(1).splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment += line
        elif value := re.fullmatch(r"(EVENT_TYPE_\w+) = \d+;", line):
            name = value.group(1).removeprefix(PREFIX)
            if letter := re.search(r'[Vv]ariant "([A-Z])"', comment):
                letters[name] = letter.group(1)
            elif name != "UNSPECIFIED":
                letters[name] = "?"  # a member without a letter shows up as a mismatch
            comment = ""
    return letters


VARIANTS = proto_variants(PROTO.read_text(encoding="utf-8"))


def check_names(text: str) -> set[str]:
    """The names a ``CHECK ((event_type = ANY (ARRAY['a'::text, ...])))`` allows."""
    return set(re.findall(r"'([a-z_]+)'::text", text))


def snapshot_check(snapshot: str) -> str:
    """The event type constraint's line of the schema snapshot (store_service/schema)."""
    lines = [ln for ln in snapshot.splitlines() if ln.startswith("constraint | event_log |")]
    found = [ln for ln in lines if "(event_type = ANY (ARRAY[" in ln]
    assert len(found) == 1, found
    return found[0]


# -- the lists checked against it -----------------------------------------------------------------

Listing = Callable[[], dict[str, object]]

LISTS: dict[str, tuple[Listing, Listing]] = {
    # The SDK's enum (public API: member names and stored values).
    "sdk-enum-values": (lambda: {e.name: e.value for e in t.EventType}, lambda: dict(STORED)),
    # Its letters, which flowctl and FlowView.variants print.
    "sdk-variants": (lambda: {e.name: e.variant for e in t.EventType}, lambda: dict(VARIANTS)),
    # The store's domain (the SDK's enum, re-exported: this case fails if it becomes a copy
    # that drifts).
    "domain-enum": (
        lambda: {e.name: (e.value, e.variant) for e in domain.EventType},
        lambda: {n: (STORED[n], VARIANTS[n]) for n in NUMBERS},
    ),
    # The SDK's wire mapping (number -> SDK member).
    "sdk-wire-numbers": (
        lambda: {e.name: number for number, e in _wire.EVENT_TYPES.items()},
        lambda: dict(NUMBERS),
    ),
    # The shared core's wire mapping, both directions.
    "core-wire-to-pb": (
        lambda: {e.name: int(n) for e, n in store_wire.EVENT_TYPE_TO_PB.items()},
        lambda: dict(NUMBERS),
    ),
    "core-wire-from-pb": (
        lambda: {e.name: n for n, e in store_wire.EVENT_TYPE_FROM_PB.items()},
        lambda: dict(NUMBERS),
    ),
    # The engine's modelled events: one class per type, named as the payload's "kind".
    "engine-events": (
        lambda: {etype.name: cls.__name__ for cls, etype in EVENT_TYPES.items()},
        lambda: dict(KINDS),
    ),
    # The codec's decoding table (the inverse of the above).
    "engine-codec": (
        lambda: {etype.name: cls.__name__ for etype, cls in event_codec._CLASSES.items()},
        lambda: dict(KINDS),
    ),
    # The schema snapshot's CHECK constraint (what `migrate --check` compares a database with).
    "schema-snapshot": (
        lambda: {n.upper(): n for n in check_names(snapshot_check(committed_snapshot()[0]))},
        lambda: dict(STORED),
    ),
}


@pytest.mark.parametrize("name", LISTS)
def test_each_list_is_the_proto_list(name: str) -> None:
    listing, expected = LISTS[name]
    assert listing() == expected()


def test_the_source_has_nineteen_members_with_a_distinct_letter_each() -> None:
    """A guard on the source itself: its parse found every member and no letter twice."""
    assert len(NUMBERS) == 19
    assert set(VARIANTS) == set(NUMBERS)
    assert len(set(VARIANTS.values())) == len(VARIANTS)
    assert "?" not in VARIANTS.values()


def test_the_store_domain_uses_the_sdk_enum_itself() -> None:
    assert domain.EventType is t.EventType


@pytest.mark.postgres_only
async def test_the_applied_check_constraint_is_the_proto_list(migrated_database_url: str) -> None:
    """The list of allowed types as a migrated database has it (migrations are immutable: a new
    type needs a new migration, and this case names the difference). The other event_type
    check, ``event_type = lower(event_type)``, lists nothing."""
    async with await psycopg.AsyncConnection.connect(migrated_database_url) as conn:
        cur = await conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'event_log'::regclass AND contype = 'c' "
            "AND pg_get_constraintdef(oid) LIKE '%%(event_type = ANY (ARRAY[%%'"
        )
        rows = await cur.fetchall()
    assert [name for name, _ in rows] == ["event_log_event_type_known"]
    assert check_names(rows[0][1]) == set(STORED.values())


# -- the Node client ------------------------------------------------------------------------------


def _node_sources() -> dict[Path, str]:
    """The handwritten TypeScript (src/gen is generated at build time and never committed)."""
    files = [
        p
        for d in ("src", "test", "examples")
        for p in sorted((NODE / d).rglob("*.ts"))
        if "gen" not in p.relative_to(NODE).parts
    ]
    assert files, "no Node sources found"
    return {p: p.read_text(encoding="utf-8") for p in files}


def node_names(sources: dict[Path, str]) -> tuple[set[str], set[str]]:
    """The event type members (``EVENT_TYPE_X``) and payload kinds (``=== "StepFinished"``)
    that the Node sources name."""
    members: set[str] = set()
    kinds: set[str] = set()
    for text in sources.values():
        members |= {m.removeprefix(PREFIX) for m in re.findall(r"\bEVENT_TYPE_[A-Z_]+\b", text)}
        kinds |= set(re.findall(r"""\[["']kind["']\]\s*[!=]==?\s*["'](\w+)["']""", text))
    return members, kinds


def test_the_node_enum_is_generated_from_the_proto() -> None:
    """Node restates no list: its EventType is ts-proto's output for common.proto, generated
    at build time from protos/ (buf.gen.yaml), and re-exported as the package's EventType."""
    index = (NODE / "src" / "index.ts").read_text(encoding="utf-8")
    assert re.search(
        r'^export \{[^}]*\bEventType\b[^}]*\} from "\./gen/flowledger/v1/common\.js";', index, re.M
    ), index
    buf_gen = (NODE / "buf.gen.yaml").read_text(encoding="utf-8")
    assert re.search(r"^\s*- directory: \.\./\.\./protos\s*$", buf_gen, re.M), buf_gen
    assert re.search(r"^\s*out: src/gen\s*$", buf_gen, re.M), buf_gen


def test_the_node_sources_name_only_proto_event_types() -> None:
    members, kinds = node_names(_node_sources())
    assert members <= set(NUMBERS), members - set(NUMBERS)
    assert kinds, "the Node verifier matches payload kinds; the parser found none"
    assert kinds <= set(KINDS.values()), kinds - set(KINDS.values())


# -- the text readers see a gained or a lost member -----------------------------------------------


def test_the_proto_comment_reader_sees_a_changed_letter_and_a_new_member() -> None:
    text = PROTO.read_text(encoding="utf-8")
    changed = text.replace('Compact variant "F".', 'Compact variant "B".')
    assert proto_variants(changed)["STEP_FINISHED"] == "B"
    added = text.replace(
        "  EVENT_TYPE_FLOW_CANCEL_REQUESTED = 19;\n",
        '  EVENT_TYPE_FLOW_CANCEL_REQUESTED = 19;\n  // New. Compact variant "B".\n'
        "  EVENT_TYPE_FLOW_PAUSED = 20;\n",
    )
    assert set(proto_variants(added)) - set(VARIANTS) == {"FLOW_PAUSED"}
    without_letter = text.replace('Compact variant "S".', "")
    assert proto_variants(without_letter)["STEP_STARTED"] == "?"


def test_the_check_readers_see_a_gained_and_a_lost_member() -> None:
    line = snapshot_check(committed_snapshot()[0])
    lost = line.replace("'step_signal'::text, ", "")
    gained = line.replace("'step_signal'::text", "'step_signal'::text, 'flow_paused'::text")
    assert check_names(line) - check_names(lost) == {"step_signal"}
    assert check_names(gained) - check_names(line) == {"flow_paused"}


def test_the_node_reader_sees_an_unknown_kind_and_member() -> None:
    extra = Path("extra.ts")
    members, kinds = node_names(
        {
            extra: 'if (p["kind"] === "FlowPaused") {}\n'
            "const x = EventType.EVENT_TYPE_FLOW_PAUSED;\n"
        }
    )
    assert (members, kinds) == ({"FLOW_PAUSED"}, {"FlowPaused"})
