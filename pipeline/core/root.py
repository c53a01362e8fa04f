"""The runtime root: one folder with the seed's layout (see ARCHITECTURE.md, Runtime root).

Every path the pipeline uses is named here, once.
"""
from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path

from pipeline.core.config import Config
from pipeline.core.errors import UserError

ROOT_ENV = "IMAGESELECTOR_ROOT"
PROFILES = ("sandbox", "production")
# Committed defaults copied into every new root (the repository's data/db/).
REPO_DIR = Path(__file__).resolve().parent.parent.parent
COMMITTED_DB_DEFAULTS = (
    "qps_config.json",
    "furniture_taxonomy_config.json",
    "furniture_taxonomy_ids.json",
    "furniture_leaf_taxonomy_ids.json",
)


def resolve_root_dir(flag: str | os.PathLike | None = None) -> Path:
    """--root flag, else $IMAGESELECTOR_ROOT, else the current directory."""
    if flag:
        return Path(flag).expanduser().absolute()
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return Path.cwd()


class Root:
    """Paths of one runtime root and its merged configuration."""

    def __init__(self, path: str | os.PathLike, overrides: dict | None = None):
        self.path = Path(path).absolute()
        self.overrides = overrides or {}

    @classmethod
    def open(cls, flag: str | None = None, overrides: dict | None = None, create: bool = True) -> "Root":
        root = cls(resolve_root_dir(flag), overrides)
        if create:
            root.ensure()
        elif not root.path.is_dir():
            raise UserError(f"root {root.path} does not exist")
        return root

    # ---- configuration -------------------------------------------------
    @cached_property
    def config(self) -> Config:
        return Config(self.path, self.overrides)

    @property
    def profile(self) -> str:
        value = self.config.get("root.profile")
        if value not in PROFILES:
            raise UserError(f"{self.path / 'imageselector.toml'}: root.profile must be one of "
                            f"{', '.join(PROFILES)}, got {value!r}")
        return value

    # ---- layout ---------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def db_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def db_path(self) -> Path:
        return self.db_dir / "etsy_data.db"

    @property
    def embeddings_dir(self) -> Path:
        return self.data_dir / "embeddings"

    @property
    def images_dir(self) -> Path:
        return self.path / "images"

    @property
    def download_dir(self) -> Path:
        return self.images_dir / "imagedownload"

    @property
    def bgremoved_dir(self) -> Path:
        return self.images_dir / "imageall_new"

    @property
    def tars_dir(self) -> Path:
        return self.images_dir / "imageall_tars"

    @property
    def primary_dir(self) -> Path:
        return self.images_dir / "imageprimary"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    @property
    def hosts_path(self) -> Path:
        return self.path / "hosts.toml"

    @property
    def config_path(self) -> Path:
        return self.path / "imageselector.toml"

    def log_path(self, stage: str) -> Path:
        return self.logs_dir / f"{stage}.log"

    def heartbeat_path(self, stage: str) -> Path:
        return self.run_dir / f"{stage}.json"

    def lock_path(self, stage: str) -> Path:
        return self.run_dir / f"{stage}.lock"

    def file(self, name: str) -> Path:
        """A control file at the root (kill, pause, paused files)."""
        return self.path / name

    def layout_dirs(self) -> list[Path]:
        return [self.db_dir, self.embeddings_dir, self.download_dir, self.bgremoved_dir,
                self.tars_dir, self.primary_dir, self.logs_dir, self.run_dir]

    def ensure(self) -> "Root":
        """Create a missing root and its layout; refuse a root that cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"root {self.path}: cannot create ({exc.strerror})") from None
        if not self.path.is_dir():
            raise UserError(f"root {self.path} is not a folder")
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise UserError(f"root {self.path} is not writable")
        for d in self.layout_dirs():
            if d.is_dir():
                continue
            try:
                d.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                # a dangling symlink (e.g. imageall_tars on an unmounted disk) is left alone
                if d.is_symlink():
                    continue
                raise UserError(f"root {self.path}: {d} exists and is not a folder") from None
            except OSError as exc:
                raise UserError(f"root {self.path}: cannot create {d} ({exc.strerror})") from None
        for name in COMMITTED_DB_DEFAULTS:
            target = self.db_dir / name
            source = REPO_DIR / "data" / "db" / name
            if not target.exists() and source.exists():
                tmp = target.with_suffix(target.suffix + ".tmp")
                shutil.copyfile(source, tmp)
                os.replace(tmp, target)
        return self
