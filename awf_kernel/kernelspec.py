"""The `awf-python` kernel spec: a refusing argv plus the provisioner and its settings."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from jupyter_client.kernelspec import KernelSpecManager
from traitlets import List, TraitError, Unicode

from .errors import AWFError

KERNEL_NAME = "awf-python"
DISPLAY_NAME = "Python (AWF sandboxed)"
PROVISIONER_NAME = "awf-provisioner"


class SettingError(AWFError):
    pass


def parse_setting(assignment: str) -> tuple[str, object]:
    """`NAME=VALUE` -> (name, value), checked by the provisioner's own traits
    and validators, exactly as the server will check it when it loads the spec.
    VALUE is JSON when it parses as JSON; a list setting also takes a
    comma-separated string (`allow_domains=a.com,b.org`)."""
    from .provisioner import AWFProvisioner

    name, sep, raw = assignment.partition("=")
    name = name.strip()
    traits = AWFProvisioner.class_traits(config=True)
    if not sep or name not in traits:
        known = ", ".join(sorted(traits))
        raise SettingError(f"--set {assignment!r}: unknown setting {name!r}",
                           hint=f"use NAME=VALUE with one of: {known}")
    trait = traits[name]
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(trait, List) and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(trait, Unicode):
        value = raw
    try:
        provisioner = AWFProvisioner(**{name: value})
    except TraitError as exc:
        message = exc.message if isinstance(exc, AWFError) else str(exc)
        raise SettingError(f"--set {assignment!r}: {message}",
                           hint=getattr(exc, "hint", None) or f"see `awf-kernel install --help` for {name}") from None
    return name, getattr(provisioner, name)


def display_name_for(name: str) -> str:
    """The picker's label for a spec installed as `name`: the default spec keeps
    the documented "Python (AWF sandboxed)"; any other name is shown in it, so
    several specs (say, one per admin policy) are told apart in JupyterLab."""
    return DISPLAY_NAME if name == KERNEL_NAME else f"Python (AWF sandboxed: {name})"


def make_spec(display_name: str = DISPLAY_NAME, settings: dict | None = None) -> dict:
    return {
        "argv": [sys.executable, "-m", "awf_kernel.refuse", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "debugger": False,
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": dict(settings or {})},
        },
    }


def install(*, user: bool = False, prefix: str | None = None, name: str = KERNEL_NAME,
            display_name: str = DISPLAY_NAME, settings: dict | None = None) -> str:
    spec = make_spec(display_name, settings)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=1, sort_keys=True)
        return KernelSpecManager().install_kernel_spec(tmp, kernel_name=name, user=user, prefix=prefix)
