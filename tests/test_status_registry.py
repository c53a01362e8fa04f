"""The status snapshot takes its sections from the provider registry: a stage adds its panel
data by registering, without touching the snapshot."""
from __future__ import annotations

import pytest

from pipeline.core.root import Root
from pipeline.status import registry
from pipeline.status.snapshot import snapshot


@pytest.fixture
def root(tmp_path):
    return Root(tmp_path / "root").ensure()


@pytest.fixture
def clean_registry(monkeypatch):
    # Registrations made by a test go with it.
    monkeypatch.setattr(registry._registry, "_registered", dict(registry._registry._registered))
    return registry


def test_stage_status_modules_are_discovered():
    sections = [p.name for p in registry.providers()]
    for section in ("backups", "runner", "workers", "disk", "schedule"):
        assert section in sections
    assert sections.index("backups") < sections.index("runner") < sections.index("workers")


def test_a_new_provider_appears_in_the_snapshot(root, clean_registry):
    seen = {}

    @clean_registry.status_provider("fixture_stage", order=5)
    def fixture_section(root_, conn, now, errors):
        seen["args"] = (root_, conn is not None, now)
        return {"depth": 3}

    out = snapshot(root, now=1234.0, with_locks=False)
    assert out["fixture_stage"] == {"depth": 3}
    assert seen["args"] == (root, True, 1234.0)


def test_a_failing_provider_is_named_and_the_rest_still_show(root, clean_registry):
    @clean_registry.status_provider("broken_stage")
    def broken(root_, conn, now, errors):
        raise RuntimeError("heartbeat file unreadable")

    out = snapshot(root, with_locks=False)
    assert out["broken_stage"] is None
    assert "broken_stage: heartbeat file unreadable" in out["errors"]
    assert out["backups"] == [] and "runner" in out


def test_two_providers_for_one_section_are_refused(clean_registry):
    @clean_registry.status_provider("twice")
    def first(root_, conn, now, errors):
        return 1

    with pytest.raises(ValueError, match="twice"):
        @clean_registry.status_provider("twice")
        def second(root_, conn, now, errors):
            return 2


def test_status_names_an_unsafe_production_root_and_clears_when_fixed(root):
    assert root.profile == "production"
    out = snapshot(root, with_locks=False)
    assert [(p["key"], p["severity"]) for p in out["safety"]] == [
        ("not backed up", "failure"), ("alerts off", "failure")]
    root.config_path.write_text(
        f'[backup.targets.usb]\nkind = "folder"\npath = "{root.path / "bk"}"\n'
        '[alerts]\nenabled = true\nsmtp_host = "127.0.0.1"\nto = ["op@example.com"]\n')
    fixed = Root(root.path)  # config is read at open
    assert snapshot(fixed, with_locks=False)["safety"] == []
