"""The broker's settings: in hub mode, the only source of admin bounds.

`BrokerConfig` is a traitlets `Configurable` read from the operator's config
file (`awf-kernel broker --config /etc/awf-kernel/broker.py`, Python or JSON,
like Jupyter's: `c.BrokerConfig.allow_domains = ["pypi.org"]`). Nothing a user
sends can change these: a request carries only what the protocol's schema
admits (awf_kernel.broker.protocol), and admin settings are not in it.

Where a setting exists on the provisioner it has the same name and meaning.
`overrides` applies per-user or per-group values over the defaults
(`"user:NAME"` beats `"group:NAME"`). Every value is validated when it is set,
so a bad config file stops the broker at start, not a kernel later.
"""

from __future__ import annotations

import ipaddress
import json
import os
import posixpath
import re
from collections.abc import Iterable

from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, validate
from traitlets.config import Config, Configurable
from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

from .. import __version__, addresses, protect
from ..errors import AWFError, PolicyError
from ..policy import parse_domains
from ..render import pod as podspec

DEFAULT_SOCKET = "/run/awf-kernel/broker.sock"

# Settings an `overrides` entry may set for a user or a group. The others
# (where the broker listens, keeps its files, who counts as a user) are global.
OVERRIDABLE = (
    "allow_domains", "block_domains", "domain_ceiling", "image", "allowed_images", "kernel_cmd",
    "egress_network", "dns_servers", "allow_private_destinations", "mem_limit", "cpu_limit",
    "pids_limit", "read_only_image", "tmp_size", "deny_write", "deny_read", "cell_notices",
    "allow_record_mode", "startup_timeout", "kernels_per_user", "notebook_roots", "kernel_runtime",
)
_OVERRIDE_KEY = re.compile(r"(user|group):[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_DOCKER_SIZE = re.compile(r"[1-9][0-9]{0,15}[bkmgBKMG]?")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")


class BrokerConfigError(AWFError):
    hint = "fix the broker's config file (`awf-kernel broker --config FILE`)"


class BrokerConfig(Configurable):
    """Admin bounds and limits of every kernel the broker starts."""

    # --- policy (admin bounds) --------------------------------------------------
    allow_domains = List(Unicode(), [], config=True, help="""
        Domains every kernel may reach, whatever the notebook asks (grammar:
        `host`, `*.host` subdomains only, `.host` both; presets like `@pypi`).
        Default: none.""")
    block_domains = List(Unicode(), [], config=True, help="""
        Domains no kernel may reach, even if allowed elsewhere (deny wins).""")
    domain_ceiling = List(Unicode(), None, allow_none=True, config=True, help="""
        The most a notebook may ask for. None (default): any domain. A list:
        a request outside it is refused at start. [] forbids notebook requests.""")
    allow_record_mode = Bool(True, config=True, help="""
        Whether a notebook may ask for record mode (everything the admin bounds
        permit, logged).""")

    # --- images --------------------------------------------------------------------
    image = Unicode(f"awf-kernel/kernel:{__version__}", config=True, help="""
        The kernel image used when a start request names none.""")
    allowed_images = List(Unicode(), None, allow_none=True, config=True, help="""
        Kernel images a start request may name. None (default): only `image`.
        `image` itself is always allowed.""")
    proxy_image = Unicode(f"awf-kernel/proxy:{__version__}", config=True, help="""
        Image of the pod's proxy (Squid, resolver, firewall step).""")
    kernel_cmd = List(Unicode(), ["python3", "-m", "ipykernel_launcher", "-f", podspec.CONNECTION_FILE],
                      config=True, help="""
        Command that starts the kernel when a start request gives none.""")

    # --- network ---------------------------------------------------------------------
    egress_network = Unicode("bridge", config=True, help="""
        Docker network through which the proxy reaches the outside.""")
    dns_servers = List(Unicode(), [], config=True, help="""
        Resolvers allowed names are forwarded to (default: Docker's).""")
    allow_private_destinations = List(Unicode(), [], config=True, help="""
        IPv4 networks (CIDR) allowed names may resolve to although they are not
        globally routable (an intranet site). Loopback and link-local never.""")

    # --- kernel container ---------------------------------------------------------------
    mem_limit = Unicode("2g", config=True, help="Memory limit of each kernel (Docker syntax, '' = none).")
    cpu_limit = Float(1.0, config=True, help="CPUs each kernel may use (0 = no limit).")
    pids_limit = Int(512, config=True, help="Most processes/threads in each kernel (0 = no limit).")
    read_only_image = Bool(True, config=True, help="""
        The kernel's image is read-only; /tmp (also HOME) is a tmpfs of `tmp_size`.""")
    tmp_size = Unicode("512m", config=True, help="Size of the kernel's /tmp (Docker syntax, '' = no limit).")
    kernel_runtime = Unicode("", config=True, help="""
        Docker runtime of each kernel container ('' = the engine's default; the
        single-user server's AWFProvisioner.runtime). gVisor (`runsc`) with its
        own network stack gets a namespace of its own routed through the proxy;
        a runtime under which the pod's rules would not hold is refused
        (awf_kernel.runtime).""")
    deny_write = List(Unicode(), [], config=True, help="""
        Paths added to the mandatory list a kernel may not change in its
        writable folder (`~/x`: in the user's home, `/abs`, or `rel` in the folder).""")
    deny_read = List(Unicode(), [], config=True, help="""
        Paths added to the mandatory list a kernel may not read in its writable folder.""")
    cell_notices = Bool(True, config=True, help="""
        After each cell, show what the sandbox denied and how to allow it.""")
    startup_timeout = Float(60.0, config=True, help="Seconds a pod may take to start.")

    # --- broker only ---------------------------------------------------------------------
    socket_path = Unicode(DEFAULT_SOCKET, config=True, help="""
        The unix socket the broker listens on, mode 0666: any local user may
        connect; who they are comes from the socket's peer credentials.""")
    runtime_dir = Unicode("", config=True, help="""
        Root-owned folder for per-kernel connection files, pod records and each
        user's protection scratch folders. Default: the socket's folder.""")
    audit_dir = Unicode("/var/lib/awf-kernel/audit", config=True, help="""
        Root-owned base folder of the egress audit trails, one subfolder per
        kernel, readable by the kernel's owner (and its pod's proxy) only.""")
    kernels_per_user = Int(5, config=True, help="Most kernels one user may have at once.")
    requests_per_user = Int(4, config=True, help="""
        Most requests one uid may have in flight at once; more are refused at
        once, so one user cannot tie up the broker for the others.""")
    request_timeout = Float(10.0, config=True, help="""
        Seconds a client has to send its whole request.""")
    notebook_roots = List(Unicode(), ["~"], config=True, help="""
        Where a user's notebooks, working folders and mounts may live: `~` (the
        user's home in the password database), `~/sub`, or an absolute path.
        Checked with realpath: a symlink pointing out is refused.""")
    min_uid = Int(1000, config=True, help="""
        uids below this (system accounts) and root never get a kernel.""")
    overrides = Dict(config=True, help="""
        Per-user or per-group settings over the defaults:
        {"group:staff": {"kernels_per_user": 10}, "user:alice": {"allow_domains": ["pypi.org"]}}.
        A user's own entry beats their groups'. Keys: """ + ", ".join(OVERRIDABLE))

    # --- validation -------------------------------------------------------------------
    @validate("allow_domains", "block_domains", "domain_ceiling")
    def _valid_domains(self, proposal):
        try:
            parse_domains(proposal["value"], f"BrokerConfig.{proposal['trait'].name}")
        except PolicyError as exc:
            raise TraitError(exc.message) from None
        return proposal["value"]

    @validate("allow_private_destinations")
    def _valid_private(self, proposal):
        try:
            addresses.parse_private_destinations(proposal["value"], "BrokerConfig.allow_private_destinations")
        except addresses.DestinationError as exc:
            raise TraitError(exc.message) from None
        return proposal["value"]

    @validate("deny_write", "deny_read")
    def _valid_deny(self, proposal):
        try:
            return protect.check_entries(proposal["value"], f"BrokerConfig.{proposal['trait'].name}")
        except ValueError as exc:
            raise TraitError(str(exc)) from None

    @validate("dns_servers")
    def _valid_dns(self, proposal):
        for server in proposal["value"]:
            try:
                ipaddress.IPv4Address(server)
            except ValueError:
                raise TraitError(f"BrokerConfig.dns_servers: {server!r} is not an IPv4 address") from None
        return proposal["value"]

    @validate("image", "proxy_image", "allowed_images")
    def _valid_images(self, proposal):
        value = proposal["value"]
        for name in ([value] if isinstance(value, str) else value or []):
            if not _IMAGE.fullmatch(name):
                raise TraitError(f"BrokerConfig.{proposal['trait'].name}: {name!r} is not an image name")
        return value

    @validate("kernel_runtime")
    def _valid_kernel_runtime(self, proposal):
        if proposal["value"] and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}", proposal["value"]):
            raise TraitError(f"BrokerConfig.kernel_runtime: {proposal['value']!r} is not a Docker runtime name")
        return proposal["value"]

    @validate("egress_network")
    def _valid_network(self, proposal):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", proposal["value"]) or proposal["value"] == "host":
            raise TraitError(f"BrokerConfig.egress_network: {proposal['value']!r} is not a bridge network's name")
        return proposal["value"]

    @validate("mem_limit", "tmp_size")
    def _valid_size(self, proposal):
        if proposal["value"] and not _DOCKER_SIZE.fullmatch(proposal["value"]):
            raise TraitError(f"BrokerConfig.{proposal['trait'].name}: {proposal['value']!r} is not a size "
                             "like 512m or 2g ('' for none)")
        return proposal["value"]

    @validate("cpu_limit", "startup_timeout", "request_timeout")
    def _valid_positive_float(self, proposal):
        value, name = proposal["value"], proposal["trait"].name
        if not (value >= 0 if name == "cpu_limit" else value > 0) or value != value or value > 86400:
            raise TraitError(f"BrokerConfig.{name}: {value!r} is out of range")
        return value

    @validate("pids_limit", "kernels_per_user", "requests_per_user", "min_uid")
    def _valid_counts(self, proposal):
        value, name = proposal["value"], proposal["trait"].name
        low = 0 if name == "pids_limit" else 1
        if not low <= value <= 2**31 - 1:
            raise TraitError(f"BrokerConfig.{name}: {value!r} must be at least {low}")
        return value

    @validate("kernel_cmd")
    def _valid_cmd(self, proposal):
        if not proposal["value"] or any(not a or "\0" in a for a in proposal["value"]):
            raise TraitError("BrokerConfig.kernel_cmd: must be a non-empty list of non-empty arguments")
        return proposal["value"]

    @validate("socket_path", "audit_dir", "runtime_dir")
    def _valid_abs(self, proposal):
        value, name = proposal["value"], proposal["trait"].name
        if name == "runtime_dir" and value == "":
            return value
        if not value.startswith("/") or "\0" in value or posixpath.normpath(value) == "/" or ".." in value.split("/"):
            raise TraitError(f"BrokerConfig.{name}: {value!r} must be an absolute path below /")
        return posixpath.normpath(value)

    @validate("notebook_roots")
    def _valid_roots(self, proposal):
        for root in proposal["value"]:
            if not (root == "~" or root.startswith("~/") or root.startswith("/")) or "\0" in root:
                raise TraitError(f"BrokerConfig.notebook_roots: {root!r} must be ~, ~/folder or /absolute/folder")
            if ".." in root.split("/") or posixpath.normpath(root.replace("~", "/home", 1)) == "/":
                raise TraitError(f"BrokerConfig.notebook_roots: {root!r} would let users mount any folder")
        return proposal["value"]

    @validate("overrides")
    def _valid_overrides(self, proposal):
        for key, settings in proposal["value"].items():
            if not isinstance(key, str) or not _OVERRIDE_KEY.fullmatch(key):
                raise TraitError(f"BrokerConfig.overrides: key {key!r} must be 'user:NAME' or 'group:NAME'")
            if not isinstance(settings, dict):
                raise TraitError(f"BrokerConfig.overrides[{key!r}]: must be a dict of settings")
            probe = BrokerConfig()
            for name, value in settings.items():
                if name not in OVERRIDABLE:
                    raise TraitError(f"BrokerConfig.overrides[{key!r}]: {name!r} cannot be overridden per "
                                     f"user or group (allowed: {', '.join(OVERRIDABLE)})")
                try:
                    setattr(probe, name, value)
                except TraitError as exc:
                    raise TraitError(f"BrokerConfig.overrides[{key!r}].{name}: {exc}") from None
        return proposal["value"]

    # --- use ------------------------------------------------------------------------------
    def for_user(self, name: str, groups: Iterable[str] = ()) -> BrokerConfig:
        """The settings that apply to one user: the defaults, then the entries
        of the groups they are in (in the config's order), then their own."""
        out = BrokerConfig(**{n: getattr(self, n) for n in self.trait_names(config=True)})
        groups = set(groups)
        for key, settings in self.overrides.items():
            kind, _, who = key.partition(":")
            if kind == "group" and who in groups:
                for n, v in settings.items():
                    setattr(out, n, v)
        for n, v in self.overrides.get(f"user:{name}", {}).items():
            setattr(out, n, v)
        return out

    def images(self) -> list[str]:
        """The kernel images a request may name (the default first)."""
        return list(dict.fromkeys([self.image, *(self.allowed_images or [])]))

    def roots(self, home: str) -> list[str]:
        """`notebook_roots` for a user whose home (password database) is `home`."""
        out = []
        for root in self.notebook_roots:
            if root == "~" or root.startswith("~/"):
                if not home or not home.startswith("/") or posixpath.normpath(home) == "/":
                    continue  # no usable home: `~` roots give this user nothing
                root = posixpath.join(home, root[2:]) if root != "~" else home
            out.append(posixpath.normpath(root))
        return out

    def runtime(self) -> str:
        return self.runtime_dir or posixpath.dirname(self.socket_path)


def load(path: str | None = None, socket_path: str | None = None) -> BrokerConfig:
    """The broker's config from a Python or JSON file (none: the defaults);
    `socket_path` (the command line) wins over the file. A setting the broker
    does not know is an error: a mistyped bound must not be silently ignored."""
    config = Config()
    if path:
        if not os.path.isfile(path):
            raise BrokerConfigError(f"config file {path} does not exist")
        folder, name = os.path.split(os.path.abspath(path))
        loader = (JSONFileConfigLoader if name.endswith(".json") else PyFileConfigLoader)(name, path=folder)
        try:
            config = loader.load_config()
        except Exception as exc:  # noqa: BLE001 - a config file can raise anything; report it
            raise BrokerConfigError(f"cannot read config file {path}: {exc}") from None
    section = config.get("BrokerConfig", {})
    known = set(BrokerConfig.class_trait_names(config=True))
    unknown = sorted(k for k in section if k not in known)
    if unknown:
        raise BrokerConfigError(f"unknown setting BrokerConfig.{unknown[0]} in {path}",
                                hint=f"settings: {', '.join(sorted(known))}")
    others = sorted(k for k in config if k != "BrokerConfig" and k[:1].isupper())
    if others:
        raise BrokerConfigError(f"{path} configures {others[0]}; the broker reads only c.BrokerConfig")
    try:
        cfg = BrokerConfig(config=config)
        if socket_path:
            cfg.socket_path = socket_path
    except TraitError as exc:
        raise BrokerConfigError(str(exc)) from None
    return cfg


def describe(cfg: BrokerConfig) -> str:
    """The effective global settings as JSON, for the broker's start-up log."""
    return json.dumps({n: getattr(cfg, n) for n in sorted(cfg.trait_names(config=True))}, sort_keys=True)
