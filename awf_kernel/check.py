"""`awf-kernel check NOTEBOOK HOST[:PORT]`: the policy decision for one
destination, computed exactly as a kernel start would, with no kernel."""

from __future__ import annotations

import os

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import jupyter_config_path
from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader, PyFileConfigLoader

from . import policy_source, trust
from .errors import AWFError
from .render import ports


def server_config() -> Config:
    """`c.AWFProvisioner...` from the Jupyter server's config files, as the server would see it."""
    cfg = Config()
    for d in reversed(jupyter_config_path()):
        for loader in (JSONFileConfigLoader("jupyter_server_config.json", d),
                       PyFileConfigLoader("jupyter_server_config.py", d)):
            try:
                cfg.merge(loader.load_config())
            except ConfigFileNotFound:
                continue
    return cfg


def provisioner_for(kernel_name: str):
    """An AWFProvisioner configured like the one that would start `kernel_name`."""
    from .provisioner import AWFProvisioner

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    settings = spec.metadata.get("kernel_provisioner", {}).get("config", {}) or {}
    return AWFProvisioner(config=server_config(), kernel_spec=spec, **settings)


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":") if target.count(":") == 1 else (target, "", "")
    if sep and not port.isdigit():
        raise AWFError(f"{target!r}: the port must be a number", hint="write HOST or HOST:PORT")
    return (host, int(port)) if sep else (target, 443)


def check(notebook: str, target: str, kernel_name: str) -> tuple[bool, str]:
    host, port = parse_target(target)
    prov = provisioner_for(kernel_name)
    # The user names the notebook: the answer is for its request as written,
    # with a note when a Jupyter server would still wait for the user's trust.
    env = {policy_source.SESSION_ENV: os.path.abspath(notebook), policy_source.CONSENT_ENV: "1"}
    if os.environ.get(policy_source.POLICY_ENV):
        env[policy_source.POLICY_ENV] = os.environ[policy_source.POLICY_ENV]
    policy = prov.resolve_policy(env).policy
    note = ""
    if (prov.require_trust and not os.environ.get(policy_source.POLICY_ENV)
            and policy_source.request_from_notebook(os.path.abspath(notebook)) is not None
            and not trust.is_trusted(os.path.abspath(notebook))):
        note = (f"\nnote: {notebook} is not trusted: in Jupyter its metadata.awf applies only once you trust it "
                f"(JupyterLab's sandbox panel: Confirm, or `jupyter trust {notebook}`)")
    if port not in ports.WEB_PORTS:
        return False, f"denied: {host}:{port} (rule: only ports 80 and 443 ever leave the sandbox)" + note
    decision = policy.decide(host)
    if decision.allowed:
        rule = f"allow rule {decision.rule}" if decision.rule else "record mode"
        return True, f"allowed: {host}:{port} (rule: {rule})" + note
    return False, f"denied: {host}:{port} (rule: {decision.reason}) — {decision.explain(host)}" + note
