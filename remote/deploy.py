"""Deploying code to a worker: `git pull` in its checkout, then that platform's dependencies.

Code reaches a worker only this way (never scp/rsync of code), and only after the operator has
typed ``YES:GIT`` (the seed's rule). The checkout is the host's ``checkout`` in hosts.toml, or
the folder holding the ``.venv`` of its ``python``. Every argument goes through the host's own
quoting (remote/commands.py), so a path cannot run a command.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from remote.errors import HostsConfigError, RemoteError
from remote.hosts import Host

CONFIRMATION = "YES:GIT"
# CUDA builds of torch for the Windows PC's GPU (the default PyPI torch on Windows is CPU-only).
DEFAULT_CUDA_INDEX_URL = "https://download.pytorch.org/whl/cu126"
_VENV_RE = re.compile(r"^(?P<checkout>.+?)[\\/]\.?venv[\\/](bin|Scripts)[\\/][^\\/]+$")


class NotConfirmed(RemoteError):
    """The operator did not type the confirmation."""


def checkout_of(host: Host) -> str:
    """Where the code lives on the host."""
    if host.checkout:
        return host.checkout
    m = _VENV_RE.match(host.python or "")
    if m:
        return m.group("checkout")
    raise HostsConfigError(f"workers.{host.name}: set checkout (the git checkout on that host); "
                           f"it cannot be derived from python = {host.python!r}")


def deploy_steps(host: Host, install: bool = True, cuda_index_url: str = DEFAULT_CUDA_INDEX_URL,
                 gpu: bool | None = None) -> list[list[str]]:
    """The programs deploy runs on the host, in order (argv lists, no shell)."""
    checkout = checkout_of(host)
    python = host.python or "python3"
    steps = [["git", "-C", checkout, "pull", "--ff-only"]]
    if not install:
        return steps
    steps.append([python, "-m", "pip", "install", "--upgrade", "-e", checkout])
    if host.is_windows:
        # DirectML runs rembg's ONNX model on any Windows GPU; CUDA torch runs the models.
        steps.append([python, "-m", "pip", "uninstall", "-y", "onnxruntime"])
        steps.append([python, "-m", "pip", "install", "--upgrade", "onnxruntime-directml"])
        if gpu is not False:
            steps.append([python, "-m", "pip", "install", "--upgrade", "--force-reinstall",
                          "torch", "torchvision", "--index-url", cuda_index_url])
    # macOS: PyPI's onnxruntime already carries the CoreML provider; Linux: the CPU build.
    return steps


@dataclass
class DeployResult:
    host: str
    steps: list[dict] = field(default_factory=list)
    ok: bool = True

    def __str__(self) -> str:
        lines = [f"deploy to {self.host}: {'ok' if self.ok else 'FAILED'}"]
        for step in self.steps:
            lines.append(f"  [{step['exit_status']}] {' '.join(step['argv'])}")
            tail = (step["stderr"] or step["stdout"]).strip().splitlines()[-3:]
            lines += [f"      {line}" for line in tail]
        return "\n".join(lines)


def deploy(host: Host, confirmation: str, transport, install: bool = True,
           timeout_s: float = 1800.0, **step_options) -> DeployResult:
    """Run the deploy steps on ``host`` through ``transport`` (remote.transport), stopping at
    the first that fails. Refuses unless ``confirmation`` is exactly YES:GIT."""
    if confirmation != CONFIRMATION:
        raise NotConfirmed(f"{host.name}: deploy needs the typed confirmation {CONFIRMATION} "
                           f"(got {confirmation!r}); nothing was run")
    result = DeployResult(host.name)
    for argv in deploy_steps(host, install=install, **step_options):
        out = transport.run(argv, timeout=timeout_s)
        result.steps.append({"argv": argv, "exit_status": out.exit_status,
                             "stdout": out.stdout[-4000:], "stderr": out.stderr[-4000:]})
        if not out.ok:
            result.ok = False
            break
    return result
