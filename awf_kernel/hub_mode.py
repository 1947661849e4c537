"""The provisioner's hub mode: every pod action is a request to the broker.

On a hub the user controls their own Jupyter server, its config and their
kernel specs, so nothing decided on this side can be a bound. Here the
provisioner only gathers the *request* (the notebook's `awf` metadata or
`AWF_POLICY`) and the launch facts (ports, key, folder, notebook) and asks
the broker (awf_kernel.broker), which alone talks to Docker and applies the
operator's bounds. Pure request building lives in functions; the provisioner
calls them from its hooks (awf_kernel.provisioner).
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from . import trust, policy_source, protect
from .broker.protocol import ENV_ALLOWLIST, PORT_NAMES

# Settings that are admin bounds or pod mechanics: on a hub only the broker's
# config decides them, whatever the user's server config or kernel spec says.
ADMIN_SETTINGS = (
    "allow_domains", "block_domains", "domain_ceiling", "allow_private_destinations", "proxy_image",
    "egress_network", "dns_servers", "kernel_uid", "kernel_gid", "mem_limit", "cpu_limit", "pids_limit",
    "mount_workdir", "extra_mounts", "env_allowlist", "audit_dir", "cell_notices", "allow_record_mode",
    "read_only_image", "tmp_size", "deny_write", "deny_read", "startup_timeout", "kernel_cmd", "runtime",
)


def ignored_settings(provisioner: Any) -> list[str]:
    """Admin settings the user's side changed from their defaults: logged as
    ignored, so a user who tried to widen something can see it had no effect."""
    # trait_defaults, not trait.default(): a dynamic default (audit_dir's
    # @default) would otherwise count as set by every user.
    return [name for name in ADMIN_SETTINGS if getattr(provisioner, name) != provisioner.trait_defaults(name)]


def kernel_env(launcher_env: dict[str, str]) -> dict[str, str]:
    """The few launcher variables the broker accepts (its own allowlist)."""
    return {k: v for k, v in launcher_env.items() if any(fnmatch.fnmatchcase(k, p) for p in ENV_ALLOWLIST)}


def consented_request(launcher_env: dict[str, str], *, root_dir: str | None, log: Any, require_trust: bool,
                      trust_parent: Any, kernel_id: str):
    """The launch's policy request, or None when it is an untrusted
    notebook's (awf_kernel.trust): consent is the user's, checked on the
    user's side with the user's own notary."""
    request, source_file = policy_source.load_request_from(launcher_env, root_dir=root_dir, log=log)
    consented = launcher_env.get(policy_source.CONSENT_ENV) == "1"
    if (request is not None and source_file and require_trust and not consented
            and not trust.is_trusted(source_file, trust_parent)):
        log.warning("awf-kernel %s: the notebook is not trusted; its request %s is not applied (trust the "
                    "notebook, then restart the kernel or save it)", kernel_id, request.written())
        return None
    return request


def policy_fields(request) -> dict[str, Any]:
    """A request as the broker's protocol carries it."""
    return {"allow_domains": list(request.allow_written), "block_domains": list(request.block_written),
            **({"mode": request.mode} if request.mode else {})}


def start_request(*, kernel_id: str, connection_info: dict[str, Any], launcher_env: dict[str, str],
                  cwd: str | None, root_dir: str | None, image: str | None, default_image: str,
                  spec_dir: str | None, log: Any, require_trust: bool = True,
                  trust_parent: Any = None) -> dict[str, Any]:
    """The broker's `start` request. The policy is the notebook's *request*
    (validated here for early, clear errors; validated again by the broker).
    An untrusted notebook's request is not sent (awf_kernel.trust): consent
    is the user's, checked on the user's side with the user's own notary."""
    request = consented_request(launcher_env, root_dir=root_dir, log=log, require_trust=require_trust,
                                trust_parent=trust_parent, kernel_id=kernel_id)
    notebook = policy_source.notebook_path(launcher_env.get(policy_source.SESSION_ENV, ""), root_dir)
    key = connection_info["key"]
    paths = protect.server_paths()
    deny_write = list(paths.deny_write) + ([spec_dir.rstrip("/") + "/"] if spec_dir else [])
    fields: dict[str, Any] = {
        "kernel_id": kernel_id,
        "ports": {name: int(connection_info[name]) for name in PORT_NAMES},
        "key": key.decode() if isinstance(key, bytes) else key,
        "signature_scheme": connection_info.get("signature_scheme", "hmac-sha256"),
        "cwd": os.path.realpath(cwd or os.getcwd()),
        "env": kernel_env(launcher_env),
        "server_paths": {"deny_write": deny_write, "deny_read": list(paths.deny_read),
                         "if_present": list(paths.if_present)},
    }
    if notebook:
        fields["notebook"] = notebook
    if request is not None:
        fields["policy"] = policy_fields(request)
    if image and image != default_image:
        fields["image"] = image  # the broker accepts only its allowed_images
    return fields
