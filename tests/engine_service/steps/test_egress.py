"""The HTTP runners' egress policy (engine_service/steps/egress.py, decision 0024): refused at send
time on the address the connection would use, named ``EgressDenied`` and never retried; a
literal URL the policy refuses is refused already when the definition is parsed."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest

from engine_service.core.replay import StepStatus
from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.run.engine import Engine
from engine_service.settings import ServiceSettings, SettingsError
from engine_service.steps.context import StepContext, StepKind, StepResult, success
from engine_service.steps.egress import DEFAULT_POLICY, EgressPolicy
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.retry import RetryPolicy
from engine_service.steps.runners import install
from flowledger.canonical import JsonValue
from flowledger.errors import InvalidArgument
from store_service.adapters.memory import MemoryEventStore
from tests.engine_service.steps.runners_server import LOOPBACK, Answer, ScriptedServer, server

__all__ = ["server"]  # the fixture


def seed(ctx: StepContext) -> StepResult:
    return success({"n": 1})


async def _registry(policy: EgressPolicy | None) -> StepRegistry:
    registry = StepRegistry()
    install(registry, policy)
    registry.register(StepType("t.seed", StepKind.SOURCE, seed))
    return registry


@pytest.fixture
async def default_engine() -> AsyncIterator[Engine]:
    """The runners as installed without a policy: public addresses only."""
    registry = await _registry(None)
    store = MemoryEventStore()
    yield Engine(store, registry=registry)
    await registry.aclose()
    await store.close()


def _templated(step: str = "http", **config: JsonValue) -> FlowDefinition:
    # The URL comes from the input: only the send-time check can judge it.
    flow = Flow("egress", retry=RetryPolicy(max_attempts=3, initial_interval_ms=0))
    return flow.source("seed", "t.seed").transform("call", step, url="{{ input.url }}",
                                                   **config).build()  # fmt: skip


async def _denied(engine: Engine, url: str, step: str = "http", **config: JsonValue) -> str:
    kw: dict[str, JsonValue] = {"record_id": "r", "fields": {"a": 1}} if step != "http" else {}
    run = await engine.run(_templated(step, **kw, **config), {"url": url})
    state = await run.state()
    call = state.step("call")
    assert call is not None
    assert state.failed
    assert call.status is StepStatus.FAILED
    assert call.error_type == "EgressDenied", call.reason
    assert call.attempt == 1  # never retried, though the policy allows three attempts
    return call.reason or ""


async def test_loopback_by_ip_is_refused(default_engine: Engine, server: ScriptedServer) -> None:
    reason = await _denied(default_engine, f"{server.url}/x")
    assert "127.0.0.1 is not a public address" in reason
    assert "ENGINE_EGRESS_ALLOW" in reason
    assert server.seen == []


async def test_a_decimal_ip_is_refused(default_engine: Engine, server: ScriptedServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    await _denied(default_engine, f"http://2130706433:{port}/x")
    assert server.seen == []


async def test_a_name_that_resolves_to_loopback_is_refused(
    default_engine: Engine, server: ScriptedServer
) -> None:
    port = server.url.rsplit(":", 1)[1]
    reason = await _denied(default_engine, f"http://localhost:{port}/x")
    assert "localhost" in reason
    assert server.seen == []


async def test_the_field_update_webhook_goes_through_the_policy(
    default_engine: Engine, server: ScriptedServer
) -> None:
    await _denied(default_engine, f"{server.url}/hook", step="field_update")
    assert server.seen == []


async def test_the_allow_list_opens_loopback(server: ScriptedServer) -> None:
    registry = await _registry(LOOPBACK)
    try:
        run = await Engine(MemoryEventStore(), registry=registry).run(
            _templated(), {"url": f"{server.url}/x"}
        )
        assert (await run.state()).completed
    finally:
        await registry.aclose()
    assert [seen.path for seen in server.seen] == ["/x"]


async def test_a_redirect_to_a_refused_address_is_refused(server: ScriptedServer) -> None:
    """The allowed server (its port alone is allowed) redirects to another loopback port: the
    hop is checked as the first request was, and refused."""
    other = ScriptedServer()
    other.start()
    port = server.url.rsplit(":", 1)[1]
    registry = await _registry(EgressPolicy.parse(f"127.0.0.1:{port}"))
    try:
        server.script(Answer(302, "", headers={"Location": f"{other.url}/secret"}))
        engine = Engine(MemoryEventStore(), registry=registry)
        reason = await _denied(engine, f"{server.url}/start", follow_redirects=True)
    finally:
        await registry.aclose()
        other.stop()
    assert f"{other.url.removeprefix('http://')}" in reason
    assert [seen.path for seen in server.seen] == ["/start"]
    assert other.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8080/x",
        "http://2130706433/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://10.0.0.7/x",
        "http://[fd00::1]/x",
        "http://100.64.0.1/x",
        "http://0.0.0.0/x",
    ],
)
@pytest.mark.parametrize("step", ["http", "field_update"])
async def test_a_literal_refused_address_is_refused_at_definition_time(
    url: str, step: str
) -> None:
    registry = await _registry(None)
    config: dict[str, JsonValue] = {"url": url}
    if step == "field_update":
        config.update(record_id="r", fields={"a": 1})
    document: dict[str, JsonValue] = {
        "name": "meta",
        "steps": [{"id": "seed", "type": "t.seed"}, {"id": "call", "type": step, "config": config}],
    }
    with pytest.raises(InvalidArgument) as exc:
        FlowDefinition.from_dict(document, registry)
    assert [v.field for v in exc.value.violations] == ["steps[1].config.url"]
    assert "egress policy" in exc.value.violations[0].description
    # An allow entry for it (and a public address) is accepted.
    allowed = await _registry(EgressPolicy.parse("0.0.0.0/0,::/0"))
    FlowDefinition.from_dict(document, allowed)
    config["url"] = "https://93.184.215.14/x"
    FlowDefinition.from_dict(document, registry)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False), ("2606:4700::1111", False), ("127.0.0.2", True), ("::1", True),
        ("169.254.169.254", True), ("fe80::1", True), ("10.1.2.3", True), ("172.31.0.1", True),
        ("192.168.1.1", True), ("100.100.0.1", True), ("0.1.2.3", True), ("224.0.0.1", True),
        ("ff02::1", True), ("::", True), ("fc00::1", True), ("::ffff:169.254.169.254", True),
        ("::ffff:8.8.8.8", False), ("2002:7f00:1::", True), ("64:ff9b::a00:1", True),
        ("255.255.255.255", True),
    ],
)  # fmt: skip
def test_what_the_default_policy_refuses(address: str, refused: bool) -> None:
    found = DEFAULT_POLICY.refusal("h", ipaddress.ip_address(address), 443)
    assert (found is not None) == refused, found


def test_allow_entries_and_the_services_own_ports() -> None:
    policy = EgressPolicy.parse("127.0.0.1/32, 10.1.0.0/16, api.internal:8443, [::1]:8080")
    at = ipaddress.ip_address
    assert policy.refusal("x", at("127.0.0.1"), 8000) is None
    assert policy.refusal("x", at("10.1.9.9"), 443) is None
    assert policy.refusal("x", at("10.2.0.1"), 443) is not None
    assert policy.refusal("API.internal.", at("10.9.0.1"), 8443) is None
    assert policy.refusal("api.internal", at("10.9.0.1"), 443) is not None
    assert policy.refusal("x", at("::1"), 8080) is None
    assert policy.refusal("x", at("::1"), 8081) is not None
    # The store's metrics port stays refused on an allowed private range, unless named.
    assert "own services" in (policy.refusal("x", at("127.0.0.1"), 9464) or "")
    assert EgressPolicy.parse("127.0.0.1:9464").refusal("x", at("127.0.0.1"), 9464) is None
    for bad in ["10.0.0.0/33", "host:0", "[::1", "a b", "http://x"]:
        with pytest.raises(ValueError, match=r"port|CIDR|host|\["):
            EgressPolicy.parse(bad)


def test_settings_read_the_allow_list_and_add_the_services_ports() -> None:
    base = {"FLOWLEDGER_INSECURE": "1", "ENGINE_AUTH_DISABLED": "1"}
    assert ServiceSettings.from_env(base).egress == DEFAULT_POLICY
    settings = ServiceSettings.from_env(
        {**base, "ENGINE_EGRESS_ALLOW": "127.0.0.1/32", "STORE_ADDR": "127.0.0.1:7001",
         "ENGINE_METRICS_LISTEN": "127.0.0.1:7002", "ENGINE_EGRESS_DENY_PORTS": "7003"}
    )  # fmt: skip
    policy = settings.egress_policy()
    assert [str(e) for e in policy.allow] == ["127.0.0.1/32"]
    loopback = ipaddress.ip_address("127.0.0.1")
    for port in (7001, 7002, 7003, 50052, 9464):
        assert policy.refusal("x", loopback, port) is not None, port
    assert policy.refusal("x", loopback, 7004) is None
    with pytest.raises(SettingsError, match="ENGINE_EGRESS_ALLOW"):
        ServiceSettings.from_env({**base, "ENGINE_EGRESS_ALLOW": "10.0.0.0/99"})
    with pytest.raises(SettingsError, match="ENGINE_EGRESS_DENY_PORTS"):
        ServiceSettings.from_env({**base, "ENGINE_EGRESS_DENY_PORTS": "http"})
