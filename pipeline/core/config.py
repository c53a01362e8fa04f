"""Configuration with the precedence of DECISIONS.md:
command-line flag > environment variable > root config (imageselector.toml) > package default.

Package defaults live in ``pipeline/defaults/<section>.toml`` (one file per section, so each
part of the pipeline owns its own defaults). A key is addressed as ``section.key``; its
environment variable is ``IMAGESELECTOR_<SECTION>_<KEY>`` (upper case). Values from the
environment and the root config are checked against the default's type, and a bad one is
reported naming the file (or variable) and the key.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import stat
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError

DEFAULTS_DIR = Path(__file__).resolve().parent.parent / "defaults"
ROOT_CONFIG_NAME = "imageselector.toml"
ENV_PREFIX = "IMAGESELECTOR_"
_MISSING = object()


def read_toml(path: Path) -> dict:
    """Read a TOML file; an unreadable or malformed file is a UserError naming it."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise UserError(f"{path}: cannot read config file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: malformed TOML: not UTF-8 text") from None


def read_json(path: Path) -> Any:
    """Read a JSON data file; an unreadable or malformed file is a UserError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: malformed JSON: {exc}") from None


def load_defaults() -> dict[str, dict]:
    sections: dict[str, dict] = {}
    for path in sorted(DEFAULTS_DIR.glob("*.toml")):
        sections[path.stem] = read_toml(path)
    return sections


@functools.lru_cache(maxsize=1)
def _package_defaults() -> dict[str, dict]:
    return load_defaults()


def toml_defaults(section: str, **keys: str):
    """Class decorator, placed under ``@dataclass``: every field takes its default from the
    package default ``<section>.<field>`` (or the dotted key given as ``field="section.key"``),
    so a settings class and ``pipeline/defaults/*.toml`` cannot drift apart. A field keeps a
    default of its own only where the TOML has no such key (both is an error at import), or
    where it is mapped to None (``field=None``: not a config key).
    ``config_values(cls, config)`` then reads exactly those keys from a root's Config."""
    def apply(cls):
        defaults = _package_defaults()
        mapped: dict[str, str] = {}
        for name in cls.__dict__.get("__annotations__", {}):
            dotted = keys.get(name, f"{section}.{name}")
            sec, _, key = (dotted or "").partition(".")
            if dotted is None or key not in defaults.get(sec, {}):
                if dotted is not None and name in keys:
                    raise TypeError(f"{cls.__name__}.{name}: no key {dotted} in pipeline/defaults/{sec}.toml")
                if name not in cls.__dict__:
                    raise TypeError(f"{cls.__name__}.{name}: no default in the class or in {dotted}")
                continue
            if name in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{name}: a default in the class and in "
                                f"pipeline/defaults/{sec}.toml; keep the TOML one")
            value = defaults[sec][key]
            if isinstance(value, (dict, list)):
                value = field(default_factory=functools.partial(copy.deepcopy, value))
            setattr(cls, name, value)
            mapped[name] = dotted
        cls.__config_keys__ = mapped
        return cls
    return apply


def config_values(cls, config: "Config") -> dict[str, Any]:
    """The root's values of every field of a ``@toml_defaults`` class, by field name."""
    return {name: config.get(dotted) for name, dotted in cls.__config_keys__.items()}


# String keys that take one of a few words, and the other spellings each word has (a TOML
# true/false or yes/no where the words mean yes or no): a wrong value is named with the words.
_YES = ("true", "yes", "on", "1")
_NO = ("false", "no", "off", "0")
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "models.unload_between_models": {"auto": (), "always": _YES, "never": _NO},
}


def choice_of(value: Any, key: str, where: str | None = None) -> str:
    """The word of CHOICES[key] that VALUE means (a bool or an alias counts), or UserError."""
    words = CHOICES[key]
    text = str(value).strip().lower()
    for word, aliases in words.items():
        if text == word or text in aliases:
            return word
    raise UserError(f"{where + ': ' if where else ''}{key} must be one of {', '.join(words)}, "
                    f"got {value!r}")


def _coerce(value: Any, default: Any, where: str, key: str) -> Any:
    """Check ``value`` against the type of ``default``; strings from the environment are parsed."""
    if key in CHOICES:
        return choice_of(value, key, where)
    if default is None or default is _MISSING:
        return value
    want = type(default)
    if isinstance(value, str) and want is not str:
        text = value.strip()
        try:
            if want is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if want is int:
                return int(text)
            if want is float:
                return float(text)
            if want in (list, dict):
                parsed = json.loads(text)
                if not isinstance(parsed, want):
                    raise ValueError(text)
                return parsed
        except (ValueError, json.JSONDecodeError):
            raise UserError(f"{where}: {key} must be {_type_name(want)}, got {value!r}") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is bool and not isinstance(value, bool):
        raise UserError(f"{where}: {key} must be {_type_name(want)}, got {value!r}")
    if want is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where}: {key} must be {_type_name(want)}, got {value!r}")
    if not isinstance(value, want):
        raise UserError(f"{where}: {key} must be {_type_name(want)}, got {value!r}")
    return value


def _type_name(t: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(t, t.__name__)


class Config:
    """Merged view of one root's configuration. ``overrides`` are command-line flags."""

    def __init__(self, root_dir: Path | None, overrides: dict[str, Any] | None = None,
                 environ: dict[str, str] | None = None):
        self.root_dir = Path(root_dir) if root_dir else None
        self.defaults = load_defaults()
        self.environ = os.environ if environ is None else environ
        self.overrides = dict(overrides or {})
        self.file_path = self.root_dir / ROOT_CONFIG_NAME if self.root_dir else None
        self.file_values: dict[str, dict] = {}
        if self.file_path is not None:
            try:
                self.file_values = read_toml(self.file_path)
            except FileNotFoundError:
                self.file_values = {}
            self._validate_file()

    def _validate_file(self) -> None:
        for section, values in self.file_values.items():
            if not isinstance(values, dict):
                raise UserError(f"{self.file_path}: {section} must be a table ([{section}])")
            for key, value in values.items():
                default = self.defaults.get(section, {}).get(key, _MISSING)
                _coerce(value, default, str(self.file_path), f"{section}.{key}")

    def get(self, dotted: str, default: Any = _MISSING) -> Any:
        section, _, key = dotted.partition(".")
        if not key:
            raise KeyError(f"config key must be section.key: {dotted!r}")
        pkg_default = self.defaults.get(section, {}).get(key, _MISSING)
        if dotted in self.overrides and self.overrides[dotted] is not None:
            return _coerce(self.overrides[dotted], pkg_default, "command line", dotted)
        env_name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
        if env_name in self.environ:
            return _coerce(self.environ[env_name], pkg_default, f"${env_name}", dotted)
        file_section = self.file_values.get(section, {})
        if key in file_section:
            return _coerce(file_section[key], pkg_default, str(self.file_path), dotted)
        if pkg_default is not _MISSING:
            return pkg_default
        if default is not _MISSING:
            return default
        raise UserError(f"config key {dotted} is not set (no default in pipeline/defaults/{section}.toml)")

    def section(self, name: str) -> dict[str, Any]:
        keys = set(self.defaults.get(name, {})) | set(self.file_values.get(name, {}))
        return {key: self.get(f"{name}.{key}") for key in sorted(keys)}

    def raw_file_section(self, name: str) -> Any:
        """A section exactly as written in the root config (tables of targets, hosts...)."""
        return self.file_values.get(name)


def read_secret(path: str | Path, what: str) -> str:
    """Read a secret from a file that only its owner may read (mode 0600 or stricter)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{what}: secret file {p} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"{what}: secret file {p} is readable by others "
                        f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {p}")
    try:
        return p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"{what}: cannot read secret file {p} ({exc.strerror})") from None
