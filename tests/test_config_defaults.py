"""Settings classes take their defaults from pipeline/defaults/*.toml (one place, no drift)."""
from __future__ import annotations

import dataclasses

import pytest

from console.settings import ConsoleSettings
from pipeline.models.bgremove import BgSettings
from pipeline.core.config import Config, config_values, toml_defaults
from pipeline.stages.download.settings import Settings as DownloadSettings
from pipeline.models.registry import ModelSettings
from pipeline.stages.orchestrate.settings import OrchestrateSettings
from pipeline.search.settings import SearchSettings
from pipeline.index.searchindex import BuildSettings
from pipeline.models.batch_run import WorkerSettings

SETTINGS = (ConsoleSettings, BgSettings, DownloadSettings, ModelSettings, OrchestrateSettings,
            SearchSettings, BuildSettings, WorkerSettings)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_bare_settings_equal_the_package_defaults(cls, tmp_path):
    config = Config(tmp_path, environ={})
    assert cls.__config_keys__, "no field is read from the config"
    assert cls() == cls(**config_values(cls, config))


def test_a_changed_package_default_reaches_the_settings_class(tmp_path):
    """The class is not a second copy: a root's value and the TOML default both flow through."""
    (tmp_path / "imageselector.toml").write_text("[search]\nnprobe = 7\n")
    assert SearchSettings.from_config(Config(tmp_path, environ={})).nprobe == 7
    assert SearchSettings().nprobe == Config(None, environ={}).get("search.nprobe")


def test_mutable_defaults_are_not_shared():
    a, b = SearchSettings(), SearchSettings()
    a.weights["clip_vitb32"] = 2.0
    assert b.weights == {}


def test_a_default_in_both_places_is_refused_at_import():
    with pytest.raises(TypeError, match="nprobe: a default in the class and in pipeline/defaults/search.toml"):
        @dataclasses.dataclass
        @toml_defaults("search")
        class Twice:
            nprobe: int = 32


def test_a_field_with_no_default_anywhere_is_refused():
    with pytest.raises(TypeError, match="no_such_key: no default in the class or in search.no_such_key"):
        @dataclasses.dataclass
        @toml_defaults("search")
        class Missing:
            no_such_key: int


def test_a_mapping_to_a_missing_key_is_refused():
    with pytest.raises(TypeError, match="no key search.nope in pipeline/defaults/search.toml"):
        @dataclasses.dataclass
        @toml_defaults("search", depth="search.nope")
        class BadMap:
            depth: int


def test_remote_ssh_defaults_match_remote_toml():
    """remote/ may not import pipeline/, so its dataclass keeps literal defaults: they must
    equal pipeline/defaults/remote.toml, which is what a root actually runs with."""
    from remote.ssh import SSHSettings

    section = Config(None, environ={}).section("remote")
    assert SSHSettings() == SSHSettings.from_mapping(section)
    assert set(SSHSettings.__dataclass_fields__) <= set(section)
