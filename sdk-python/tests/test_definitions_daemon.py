"""Workflow definitions against the real `mantle` daemon (see conftest.daemon): validate,
plan, apply, roll back, read, list, delete, tenant isolation and scopes, sync and
asyncio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import mantle
import mantle.aio
from mantle import errors

from .conftest import Daemon

pytestmark = pytest.mark.daemon

HELLO = """\
name: {name}
steps:
  - name: greet
    action: core/log
    params:
      message: "{greeting} {{{{ inputs.who }}}}"
inputs:
  who: {{type: string, default: world}}
"""

# The second step's action is misspelt (line 8, column 13).
BAD = """\
name: {name}
steps:
  - name: greet
    action: core/log
    params:
      message: hi
  - name: fetch
    action: core/lgo
"""


def hello(name: str, greeting: str = "hello") -> str:
    return HELLO.format(name=name, greeting=greeting)


@pytest.fixture
def tenant(op: mantle.Client, unique: str) -> str:
    """A fresh tenant, so listings only hold what the test applied."""
    name = f"defs-{unique}"
    op.create_tenant(name)
    return name


@pytest.fixture
def tc(daemon: Daemon, tenant: str) -> Iterator[mantle.Client]:
    """The operator acting on the fresh tenant."""
    with daemon.client(tenant=tenant) as c:
        yield c


def _key(op: mantle.Client, tenant: str, *scopes: str) -> str:
    return op.create_api_key(tenant, list(scopes), name="defs-test").token


# -- validate -----------------------------------------------------------------------------


def test_validate_good_file(tc: mantle.Client) -> None:
    result = tc.validate(hello("hello"), "hello.yaml")
    assert result.name == "hello"
    assert result.step_count == 1
    assert len(result.content_hash) == 64
    # Formatting and comments do not change the content hash.
    reformatted = "# a comment\n" + hello("hello").replace("steps:\n", "steps:   \n")
    assert tc.validate(reformatted).content_hash == result.content_hash
    # Nothing was stored.
    assert tc.list_definitions() == []


def test_list_actions(tc: mantle.Client) -> None:
    actions = {a.name: a for a in tc.list_actions()}
    assert list(actions) == [
        "core/log",
        "core/set",
        "core/sleep",
        "core/fail",
        "http/request",
        "ai/completion",
    ]
    ai = actions["ai/completion"]
    assert ai.credential_types == ["openai", "anthropic"]
    assert sorted(ai.output_schema["properties"]) == [
        "finish_reason",
        "json",
        "model",
        "rounds",
        "text",
        "tool_calls",
        "usage",
    ]
    http = actions["http/request"]
    assert http.kind == "effect"
    assert http.credential_types == ["bearer", "basic", "header"]
    assert http.params_schema["required"] == ["url"]
    assert http.params_schema["properties"]["ok_status"]["type"] == "array"
    assert sorted(http.output_schema["properties"]) == ["body", "headers", "status", "url"]
    assert actions["core/sleep"].kind == "timer"


def test_warnings_do_not_fail_a_file(tc: mantle.Client) -> None:
    source = (
        "name: warned\n"
        "triggers:\n  - {type: webhook, path: /hooks/warned}\n"
        "steps:\n  - name: a\n    action: core/log\n"
        "    params: {message: \"{{ inputs.who }}\"}\n"
    )
    result = tc.validate(source, "warned.yaml")
    assert result.step_count == 1
    rendered = [str(w) for w in result.warnings]
    assert rendered[0].startswith("warned.yaml:3:5: triggers[0]: a webhook trigger without")
    assert "no input \"who\"" in rendered[1]
    assert [str(w) for w in tc.plan(source, "warned.yaml").warnings] == rendered
    assert tc.apply(source, "warned.yaml").warnings[1].path == "steps[0].params.message"
    assert tc.validate(hello("hello")).warnings == []


def test_validate_bad_file_lists_problems(tc: mantle.Client) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.validate(BAD.format(name="broken"), "flows/broken.yaml")
    problems = exc.value.problems
    assert problems, exc.value
    action = [p for p in problems if p.path == "steps[1].action"]
    assert len(action) == 1, problems
    assert action[0].file == "flows/broken.yaml"
    assert (action[0].line, action[0].column) == (8, 13)
    assert "core/lgo" in action[0].message
    for p in problems:
        assert p.line >= 1 and p.column >= 1 and p.message
    assert [(p.line, p.column) for p in problems] == sorted((p.line, p.column) for p in problems)


def test_validate_without_filename_uses_input(tc: mantle.Client) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.validate("name: x\nsteps: 3\n")
    assert exc.value.problems
    assert {p.file for p in exc.value.problems} == {"<input>"}


def test_yaml_syntax_error_has_a_position(tc: mantle.Client) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.validate("name: x\nsteps: [\n", "syntax.yaml")
    assert exc.value.problems
    assert exc.value.problems[0].line >= 1


def test_file_helpers_name_the_file(tc: mantle.Client, tmp_path: Path) -> None:
    good = tmp_path / "hello.yaml"
    good.write_text(hello("from-file"))
    assert tc.validate_file(good).name == "from-file"
    assert tc.plan_file(good).current_version == 0
    applied = tc.apply_file(good)
    assert applied.created and applied.definition.source == good.read_text()

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD.format(name="broken"))
    for method in (tc.validate_file, tc.plan_file, tc.apply_file):
        with pytest.raises(errors.InvalidArgument) as exc:
            method(bad)
        assert {p.file for p in exc.value.problems} == {str(bad)}


# -- plan and apply -----------------------------------------------------------------------


def test_apply_is_idempotent(tc: mantle.Client) -> None:
    plan = tc.plan(hello("hello"))
    assert (plan.name, plan.current_version, plan.changed) == ("hello", 0, True)
    assert {(c.kind, c.section, c.name) for c in plan.changes} == {
        ("added", "step", "greet"),
        ("added", "input", "who"),
    }

    first = tc.apply(hello("hello"), "hello.yaml")
    assert first.created is True
    assert first.definition.version == 1
    assert first.definition.content_hash == plan.content_hash
    assert {(c.kind, c.name) for c in first.changes} == {("added", "greet"), ("added", "who")}

    second = tc.apply(hello("hello"), "hello.yaml")
    assert second.created is False
    assert second.definition.version == 1
    assert second.changes == []
    assert second.definition.content_hash == first.definition.content_hash

    unchanged = tc.plan(hello("hello"))
    assert (unchanged.current_version, unchanged.changed, unchanged.changes) == (1, False, [])


def test_changed_param_is_one_field_change(tc: mantle.Client) -> None:
    tc.apply(hello("hello"))
    plan = tc.plan(hello("hello", greeting="hi"))
    assert plan.current_version == 1 and plan.changed
    assert len(plan.changes) == 1
    change = plan.changes[0]
    assert (change.kind, change.section, change.name) == ("changed", "step", "greet")
    assert len(change.fields) == 1
    field = change.fields[0]
    assert field.path == "params.message"
    assert field.before == '"hello {{ inputs.who }}"'
    assert field.after == '"hi {{ inputs.who }}"'

    applied = tc.apply(hello("hello", greeting="hi"))
    assert applied.created is True
    assert applied.definition.version == 2
    assert applied.changes == plan.changes


def test_invalid_apply_stores_nothing(tc: mantle.Client) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.apply(BAD.format(name="broken"))
    assert exc.value.problems
    with pytest.raises(errors.InvalidArgument) as exc:
        tc.plan(BAD.format(name="broken"))
    assert exc.value.problems
    assert tc.list_definitions() == []


# -- read, list, delete -------------------------------------------------------------------


def test_get_versions_and_source_round_trip(tc: mantle.Client) -> None:
    v1_source = "# version one\n" + hello("hello")
    tc.apply(v1_source, "hello.yaml")
    tc.apply(hello("hello", greeting="hi"), "hello.yaml")

    latest = tc.get_definition("hello")
    assert latest.version == 2
    assert latest.source == hello("hello", greeting="hi")
    assert latest.spec["name"] == "hello"
    assert latest.spec["steps"][0]["params"]["message"] == "hi {{ inputs.who }}"
    assert latest.create_time is not None

    first = tc.get_definition("hello", version=1)
    assert first.version == 1
    assert first.source == v1_source  # exactly as applied, comment included
    assert first.content_hash != latest.content_hash

    with pytest.raises(errors.NotFound):
        tc.get_definition("hello", version=3)
    with pytest.raises(errors.NotFound):
        tc.get_definition("no-such-workflow")


def test_list_and_versions(tc: mantle.Client) -> None:
    for name in ("zeta", "alpha"):
        tc.apply(hello(name))
    tc.apply(hello("alpha", greeting="hi"))

    listed = tc.list_definitions()
    assert [d.name for d in listed] == ["alpha", "zeta"]
    assert [d.latest_version for d in listed] == [2, 1]
    assert listed[0].update_time is not None and listed[0].create_time is not None
    assert listed[0].update_time >= listed[0].create_time
    # One per page still returns everything.
    assert [d.name for d in tc.list_definitions(page_size=1)] == ["alpha", "zeta"]

    versions = tc.list_definition_versions("alpha")
    assert [v.version for v in versions] == [2, 1]
    assert versions[0].content_hash == tc.get_definition("alpha").content_hash
    assert [v.version for v in tc.list_definition_versions("alpha", page_size=1)] == [2, 1]


def test_delete_then_get_is_not_found(tc: mantle.Client) -> None:
    tc.apply(hello("doomed"))
    tc.apply(hello("doomed", greeting="hi"))
    tc.delete_definition("doomed")
    with pytest.raises(errors.NotFound):
        tc.get_definition("doomed")
    assert "doomed" not in [d.name for d in tc.list_definitions()]
    with pytest.raises(errors.NotFound):
        tc.delete_definition("doomed")
    # Applying again continues the version numbers.
    assert tc.plan(hello("doomed")).current_version == 0
    again = tc.apply(hello("doomed"))
    assert again.created and again.definition.version == 3


def test_rollback_definition_stores_the_old_source_again(tc: mantle.Client) -> None:
    v1 = tc.apply(hello("hello"), "hello.yaml").definition
    # A comment survives in the source, which the rollback must copy byte for byte.
    v2 = tc.apply("# second\n" + hello("hello", greeting="hi"), "hello.yaml").definition
    assert (v1.version, v2.version) == (1, 2)

    back = tc.rollback_definition("hello", 1)
    assert back.created is True
    assert back.definition.version == 3
    assert back.definition.source == v1.source == hello("hello")
    assert back.definition.content_hash == v1.content_hash != v2.content_hash
    assert [(c.kind, c.section, c.name) for c in back.changes] == [("changed", "step", "greet")]
    assert tc.get_definition("hello").source == tc.get_definition("hello", 1).source
    assert [v.version for v in tc.list_definition_versions("hello")] == [3, 2, 1]

    # Rolling back to the content of the latest version stores nothing.
    again = tc.rollback_definition("hello", 1)
    assert (again.created, again.definition.version, again.changes) == (False, 3, [])
    assert tc.rollback_definition("hello", 3).created is False

    to_v2 = tc.rollback_definition("hello", 2)
    assert to_v2.created and to_v2.definition.version == 4
    assert to_v2.definition.source == v2.source

    with pytest.raises(errors.NotFound):
        tc.rollback_definition("hello", 9)
    with pytest.raises(errors.NotFound):
        tc.rollback_definition("no-such-workflow", 1)
    with pytest.raises(ValueError, match="to_version"):
        tc.rollback_definition("hello", 0)
    assert [v.version for v in tc.list_definition_versions("hello")] == [4, 3, 2, 1]


# -- tenants and scopes -------------------------------------------------------------------


def test_tenant_isolation(daemon: Daemon, op: mantle.Client, unique: str) -> None:
    a, b = f"defs-a-{unique}", f"defs-b-{unique}"
    op.create_tenant(a)
    op.create_tenant(b)
    with daemon.client(_key(op, a, "*")) as ca, daemon.client(_key(op, b, "*")) as cb:
        applied = ca.apply(hello("private"))
        assert applied.created
        assert [d.name for d in ca.list_definitions()] == ["private"]

        with pytest.raises(errors.NotFound):
            cb.get_definition("private")
        with pytest.raises(errors.NotFound):
            cb.list_definition_versions("private")
        with pytest.raises(errors.NotFound):
            cb.delete_definition("private")
        assert cb.list_definitions() == []
        assert cb.plan(hello("private")).current_version == 0

        # The same name in B is B's own workflow.
        assert cb.apply(hello("private", greeting="hi")).definition.version == 1
        assert ca.get_definition("private").source == hello("private")


def test_scopes(daemon: Daemon, op: mantle.Client, tenant: str) -> None:
    with daemon.client(tenant=tenant) as writer:
        writer.apply(hello("scoped"))
    with daemon.client(_key(op, tenant, "definitions:read")) as reader:
        assert reader.validate(hello("scoped")).name == "scoped"
        assert reader.plan(hello("scoped")).changed is False
        assert reader.get_definition("scoped").version == 1
        assert [d.name for d in reader.list_definitions()] == ["scoped"]
        with pytest.raises(errors.PermissionDenied):
            reader.apply(hello("scoped", greeting="hi"))
        with pytest.raises(errors.PermissionDenied):
            reader.delete_definition("scoped")
    with daemon.client(_key(op, tenant, "executions:read")) as other:
        with pytest.raises(errors.PermissionDenied):
            other.list_definitions()
        with pytest.raises(errors.PermissionDenied):
            other.validate(hello("scoped"))
    with daemon.client(_key(op, tenant, "definitions:write")) as writer_only:
        assert writer_only.apply(hello("scoped", greeting="hi")).definition.version == 2


# -- asyncio ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aio_definitions(daemon: Daemon, op: mantle.Client, tenant: str, tmp_path: Path) -> None:
    path = tmp_path / "hello.yaml"
    path.write_text(hello("hello"))
    async with daemon.aio_client(tenant=tenant) as c:
        assert (await c.validate_file(path)).step_count == 1
        assert "http/request" in [a.name for a in await c.list_actions()]
        assert (await c.plan_file(path)).current_version == 0
        first = await c.apply_file(path)
        assert first.created and first.definition.version == 1
        assert (await c.apply(hello("hello"))).created is False
        second = await c.apply(hello("hello", greeting="hi"))
        assert second.definition.version == 2
        assert (await c.get_definition("hello", 1)).source == hello("hello")
        assert [d.name for d in await c.list_definitions()] == ["hello"]
        assert [v.version for v in await c.list_definition_versions("hello")] == [2, 1]
        with pytest.raises(errors.InvalidArgument) as exc:
            await c.validate(BAD.format(name="broken"), "broken.yaml")
        assert any(p.path == "steps[1].action" for p in exc.value.problems)
        back = await c.rollback_definition("hello", 1)
        assert back.created and back.definition.version == 3
        assert back.definition.source == hello("hello")
        assert (await c.rollback_definition("hello", 1)).created is False
        with pytest.raises(errors.NotFound):
            await c.rollback_definition("hello", 7)
        await c.delete_definition("hello")
        with pytest.raises(errors.NotFound):
            await c.get_definition("hello")
