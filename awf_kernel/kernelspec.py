"""The `awf-python` kernel spec: a refusing argv plus the provisioner and its settings."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import tempfile

from jupyter_client.kernelspec import KernelSpecManager
from traitlets import List, TraitError, Unicode

from .errors import AWFError
from .policy import parse_domains
from .protect import check_entries

KERNEL_NAME = "awf-python"
DISPLAY_NAME = "Python (AWF sandboxed)"
PROVISIONER_NAME = "awf-provisioner"


class SettingError(AWFError):
    pass


def parse_setting(assignment: str) -> tuple[str, object]:
    """`NAME=VALUE` -> (name, value) checked against the provisioner's traits.
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
        value = trait.validate(AWFProvisioner(), value)
    except TraitError as exc:
        raise SettingError(f"--set {assignment!r}: {exc}", hint=f"see `awf-kernel install --help` for {name}") from None
    _check_meaning(name, value)
    return name, value


def _check_meaning(name: str, value) -> None:
    """Refuse now what would otherwise only fail at every kernel start."""
    if name in ("allow_domains", "block_domains", "domain_ceiling") and value is not None:
        parse_domains(value, f"--set {name}")
    if name in ("deny_write", "deny_read"):
        try:
            check_entries(value, f"--set {name}")
        except ValueError as exc:
            raise SettingError(str(exc), hint=f"e.g. {name}=~/projects/secret,/srv/shared/keys/") from None
    if name == "dns_servers":
        for server in value:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise SettingError(f"--set dns_servers: {server!r} is not an IP address",
                                   hint="give resolver addresses, e.g. dns_servers=10.0.0.2,10.0.0.3") from None


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
