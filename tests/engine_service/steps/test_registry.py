"""The step type registry: decorator, lookups, layering, and plugins from entry points."""

from __future__ import annotations

import importlib
import textwrap
import uuid
from pathlib import Path

import pytest

from engine_service.definitions.samples import sample_registry
from engine_service.steps.context import StepContext, StepKind, StepResult, success
from engine_service.steps.registry import ENTRY_POINT_GROUP, StepRegistry, StepType
from flowledger.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


def test_decorator_registers_and_returns_the_function() -> None:
    registry = StepRegistry()

    @registry.step("t.upper", kind=StepKind.TRANSFORM, config_schema={"type": "object"})
    def upper(ctx: StepContext) -> StepResult:
        """Upper-case."""
        return success(str(ctx.input_payloads[0]).upper())

    step_type = registry.get("t.upper")
    assert step_type.fn is upper
    assert step_type.kind is StepKind.TRANSFORM
    assert step_type.description == "Upper-case."
    assert "t.upper" in registry
    assert registry.name_of(upper) == "t.upper"
    assert registry.names() == ["t.upper"]


def test_names_are_taken_once() -> None:
    registry = sample_registry()
    original = registry.get("chem.seed")
    assert registry.register(original) is original  # the same type again: a no-op
    with pytest.raises(AlreadyExists) as exc:
        registry.register(StepType("chem.seed", StepKind.SOURCE, lambda ctx: success()))
    assert exc.value.reason == "STEP_TYPE_EXISTS"


def test_unknown_type_is_not_found() -> None:
    with pytest.raises(NotFound) as exc:
        sample_registry().get("nope")
    assert exc.value.reason == "STEP_TYPE_NOT_FOUND"
    assert "chem.seed" in exc.value.message  # tells what is known


def test_child_registries_layer_without_changing_the_parent() -> None:
    parent = sample_registry()
    child = parent.child()
    child.register(StepType("extra", StepKind.SINK, lambda ctx: success()))
    assert "chem.seed" in child
    assert "extra" in child
    assert "extra" not in parent


def test_invalid_config_schema_is_refused_at_registration() -> None:
    with pytest.raises(InvalidArgument) as exc:
        StepType("bad", StepKind.SINK, lambda ctx: success(), {"type": "no-such-type"})
    assert exc.value.violations[0].field == "config_schema"


def test_config_validation_names_paths_under_the_prefix() -> None:
    seed = sample_registry().get("chem.seed")
    assert seed.config_violations({"text": "x"}) == []
    found = seed.config_violations({"text": 3}, "steps[0].config")
    assert [v.field for v in found] == ["steps[0].config.text"]
    with pytest.raises(InvalidArgument):
        seed.validate_config({"text": 3})


def _install_plugin(root: Path, module: str, target: str, body: str) -> None:
    """A real installed distribution on sys.path: a module and a dist-info declaring the entry
    point, which is what importlib.metadata discovers for an installed plugin package."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{module} = {module}:{target}\n")


def test_plugins_load_from_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installer = f"flplugin_{uuid.uuid4().hex[:8]}"
    single = f"flplugin_{uuid.uuid4().hex[:8]}"
    _install_plugin(
        tmp_path,
        installer,
        "install",
        """
        from engine_service.steps.context import StepKind, success

        def install(registry):
            @registry.step("acme.hello", kind=StepKind.SOURCE)
            def hello(ctx):
                return success({"hello": "acme"})
        """,
    )
    _install_plugin(
        tmp_path,
        single,
        "STEP",
        """
        from engine_service.steps.registry import StepType
        from engine_service.steps.context import StepKind, success

        STEP = StepType("acme.done", StepKind.SINK, lambda ctx: success())
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry = StepRegistry()
    loaded = registry.load_plugins()
    assert {installer, single} <= set(loaded)
    assert "acme.hello" in registry
    assert "acme.done" in registry
    assert registry.load_plugins() == []  # each entry point loads once


def test_a_broken_plugin_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"flplugin_{uuid.uuid4().hex[:8]}"
    _install_plugin(tmp_path, module, "install", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(FailedPrecondition) as exc:
        StepRegistry().load_plugins()
    assert exc.value.reason == "STEP_PLUGIN_FAILED"
    assert module in exc.value.message


def test_the_default_registry_is_one_per_process() -> None:
    from engine_service.steps.plugins import default_registry

    assert default_registry() is default_registry()
