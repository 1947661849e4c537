"""The kernel container's OCI runtime (`AWFProvisioner.runtime`), and which
runtimes keep the pod's egress rules in force.

The pod's rules (iptables owner match, nat REDIRECT to Squid and the
resolver) live in the host kernel, in the proxy's network namespace. They see
the kernel's packets only when the kernel's sockets are host-kernel sockets in
that namespace. That holds for runtimes that run the container's processes on
the host kernel (runc, crun, youki), and for gVisor (`runsc`) with
`--network=host`, where gVisor's Sentry makes every socket the sandbox asks
for as a host socket in the namespace. It does NOT hold for gVisor's default
`--network=sandbox`: gVisor then runs its own network stack (netstack) inside
the sandbox, takes over the namespace's interfaces through packet sockets and
sends the kernel's packets past every rule in a namespace it merely shares
(measured against the test internet: a blocked host, the canary on any port
and DNS to any server were all reached; 127.0.0.1:3128 is gVisor's own
loopback). See docs/architecture.md, "The kernel under gVisor".

So gVisor with any network mode but `host` and `none` gets the routed wiring
(render/link.py): the kernel in a namespace of its own whose only way out is
a link into the proxy's namespace, where the rules judge whatever arrives,
whichever stack sent it. Host-kernel runtimes and gVisor with --network=host
share the proxy's namespace as before. Refused at kernel start, before any
container exists: gVisor with --network=none (no ports to talk to the
kernel through), and runtimes we do not know (Kata's VM with its own kernel).
Pure decisions here (`judge`, `routed`); `check` asks the engine.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
from dataclasses import dataclass

from .errors import AWFError

# Runtimes whose container processes use the host kernel directly (by the
# basename of the binary the engine runs).
HOST_KERNEL = ("runc", "crun", "youki")
# gVisor's plain registration (its own network stack: the routed wiring).
GVISOR_EXAMPLE = {"runsc": {"path": "/usr/bin/runsc"}}
DAEMON_JSON = "/etc/docker/daemon.json"
RELOAD = "`sudo kill -HUP $(pidof dockerd)` (or `sudo systemctl reload docker`)"


# What a gVisor older than release-20240801 says on a host kernel >= 6.11 when
# it would run its own network stack (gVisor issue 10704): it takes every
# namespace for the root one. Debian 12's runsc (0.0~20221219) and even
# bookworm-backports' (0.0~20240729) are that old.
ROOT_NS_ERROR = "cannot run with network enabled in root network namespace"
TOO_OLD_FIX = ("this gVisor is too old for the host's kernel (Linux >= 6.11; gVisor issue 10704): install gVisor "
               "release-20240801 or later (gVisor's apt repository or release binaries, https://gvisor.dev/docs/"
               "user_guide/install/), or register it with \"runtimeArgs\": [\"--network=host\"], which shares the "
               "proxy's namespace instead (docs/architecture.md, \"The kernel under gVisor\")")


class RuntimeMissing(AWFError):
    def __init__(self, name: str, known: list[str]):
        example = GVISOR_EXAMPLE if _looks_gvisor(name, "") else {name: {"path": "/path/to/" + name}}
        super().__init__(
            f"runtime '{name}' (setting runtime) is not registered with the Docker engine "
            f"(it knows: {', '.join(sorted(known)) or 'none'})",
            hint=f"register it in {DAEMON_JSON} (merge with what is there): "
                 f"{json.dumps({'runtimes': example})}, then reload the engine with {RELOAD}; "
                 "or set AWFProvisioner.runtime to one the engine knows ('' = the engine's default). "
                 "`awf-kernel doctor` checks it")
        self.name = name


class RuntimeRefused(AWFError):
    """A registered runtime under which the pod's rules would not see the kernel's packets."""


@dataclass(frozen=True)
class EngineRuntime:
    """One runtime as the engine reports it (`docker info`, Runtimes)."""

    name: str
    path: str = ""
    args: tuple[str, ...] = ()
    runtime_type: str = ""  # containerd shim type (Docker >= 23), when registered that way

    @property
    def gvisor(self) -> bool:
        return _looks_gvisor(self.name, self.path, self.runtime_type)

    @property
    def gvisor_network(self) -> str | None:
        """gVisor's network mode from its flags (runsc's default is `sandbox`), or None when not gVisor."""
        return _flag(self.args, "network", "sandbox") if self.gvisor else None


def _looks_gvisor(name: str, path: str, runtime_type: str = "") -> bool:
    base = posixpath.basename(path or "")
    return base.startswith("runsc") or any(w in (name + " " + runtime_type).lower() for w in ("runsc", "gvisor"))


def _flag(args: tuple[str, ...], flag: str, default: str) -> str:
    """The value of a Go-style flag (`-f=v`, `--f=v`, `-f v`, `--f v`; the last wins)."""
    value = default
    items = list(args)
    for i, arg in enumerate(items):
        key = arg.lstrip("-")
        if not arg.startswith("-") or not key:
            continue
        if key.startswith(flag + "="):
            value = key[len(flag) + 1:]
        elif key == flag and i + 1 < len(items):
            value = items[i + 1]
    return value


def engine_runtimes(info: dict) -> tuple[dict[str, EngineRuntime], str]:
    """(the engine's runtimes by name, the name of its default runtime) from `docker info`."""
    out = {}
    for name, spec in (info.get("Runtimes") or {}).items():
        spec = spec or {}
        out[name] = EngineRuntime(name, str(spec.get("path") or ""),
                                  tuple(str(a) for a in (spec.get("runtimeArgs") or ())),
                                  str(spec.get("runtimeType") or ""))
    return out, str(info.get("DefaultRuntime") or "runc")


def routed(rt: EngineRuntime) -> bool:
    """Whether a kernel under `rt` gets a namespace of its own routed through
    the proxy (its packets may come from a network stack of its own) rather
    than the proxy's namespace. gVisor registered as a shim keeps its network
    mode where the engine does not show it: routed too, which holds whatever
    the mode is."""
    return rt.gvisor and rt.gvisor_network != "host"


def judge(rt: EngineRuntime) -> str | None:
    """None when the pod's rules see every packet of a container under `rt`
    (in the proxy's namespace, or routed through it); otherwise why not (one
    sentence, for an error message)."""
    if rt.gvisor:
        if rt.gvisor_network == "none" and not (rt.runtime_type and not rt.path):
            return (f"'{rt.name}' is gVisor with --network=none: the kernel would have no network at all, not "
                    "even the published ports Jupyter talks to it through")
        return None
    base = posixpath.basename(rt.path) if rt.path else (rt.name if not rt.runtime_type else "")
    if base in HOST_KERNEL or rt.runtime_type == "io.containerd.runc.v2":
        return None
    return (f"'{rt.name}' ({rt.path or rt.runtime_type or 'no path'}) is not a runtime awf-kernel knows to keep the "
            "pod's rules in force: they see the kernel's packets only when its sockets are the host kernel's, in the "
            f"proxy's network namespace ({', '.join(HOST_KERNEL)}), or gVisor, whose kernel is routed through it")


def gvisor_fix(name: str) -> str:
    return (f"register gVisor with its own network stack (the default) in {DAEMON_JSON}: "
            f"{json.dumps({'runtimes': {name: GVISOR_EXAMPLE['runsc']}})} (merge with what is there), then reload "
            f"the engine with {RELOAD} (docs/architecture.md, \"The kernel under gVisor\")")


def resolve(name: str, info: dict) -> EngineRuntime:
    """The runtime a kernel container would get with setting `name` ("" = the
    engine's default), if the pod's rules hold under it; else RuntimeMissing /
    RuntimeRefused. The engine's default runtime also runs the pod's proxy
    and firewall step, so it must be a host-kernel one whatever `name` is."""
    runtimes, default = engine_runtimes(info)
    default_rt = runtimes.get(default, EngineRuntime(default, default))
    if default_rt.gvisor or judge(default_rt) is not None:
        raise RuntimeRefused(
            f"the Docker engine's default runtime is '{default}', which runs the pod's proxy and its firewall step "
            "too: they must run on the host kernel, in the namespace whose rules they install",
            hint=f"keep the engine's default-runtime runc (remove \"default-runtime\" from {DAEMON_JSON}, reload "
                 f"with {RELOAD}) and give gVisor to the kernel alone with AWFProvisioner.runtime")
    rt = default_rt if not name else runtimes.get(name)
    if rt is None:
        raise RuntimeMissing(name, list(runtimes))
    why = judge(rt)
    if why is not None:
        raise RuntimeRefused(
            f"runtime '{rt.name}' (setting runtime{'' if name else ': the engine default'}) is refused: {why}",
            hint=gvisor_fix(rt.name) if rt.gvisor else "set AWFProvisioner.runtime to runc or to gVisor (runsc)")
    return rt


_RELEASE = re.compile(r"(?:release-|0\.0~)(\d{8})")
FIXED_RELEASE = 20240801   # the first gVisor release whose own stack runs on Linux >= 6.11
FIXED_KERNEL = (6, 11)


def too_old_for_kernel(version_text: str, kernel_version: str) -> bool:
    """Whether `runsc --version`'s text names a gVisor that cannot run its own
    network stack on this host kernel (`docker info`'s KernelVersion). Only a
    version we can read is judged: anything else is left to the start."""
    m = _RELEASE.search(version_text or "")
    k = re.match(r"(\d+)\.(\d+)", kernel_version or "")
    if not m or not k:
        return False
    return int(m.group(1)) < FIXED_RELEASE and (int(k.group(1)), int(k.group(2))) >= FIXED_KERNEL


def local_version(rt: EngineRuntime) -> str:
    """`<path> --version` of a runtime the engine runs from a local path ('' when it cannot be asked)."""
    if not rt.path.startswith("/") or not os.access(rt.path, os.X_OK):
        return ""
    try:
        out = subprocess.run([rt.path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout


def refuse_if_too_old(rt: EngineRuntime, info: dict, version: str) -> None:
    """A routed gVisor too old for the host kernel fails only when its
    container starts, and such a failed start leaves its sandbox processes
    behind on the engine: refuse it before any container exists."""
    if routed(rt) and too_old_for_kernel(version, str(info.get("KernelVersion") or "")):
        raise RuntimeRefused(
            f"runtime '{rt.name}' ({version.strip().splitlines()[0]}) cannot run its own network stack on this "
            f"host's Linux {info.get('KernelVersion')}: it would fail with \"{ROOT_NS_ERROR}\"", hint=TOO_OLD_FIX)


def vet(name: str, info: dict) -> EngineRuntime:
    """`resolve`, and for a routed gVisor its version (`--version` of the
    runtime's binary here) against the engine's host kernel."""
    rt = resolve(name, info)
    if routed(rt):
        refuse_if_too_old(rt, info, local_version(rt))
    return rt


def check(name: str) -> EngineRuntime:
    """`vet` against the engine this process talks to (blocking: call from a worker thread)."""
    from .sandbox.docker import client

    return vet(name, client().info())


def probe(client, name: str, image: str, network: str) -> tuple[bool, str]:
    """Start one throwaway container from `image` under runtime `name` on
    `network` (a network namespace to set up, as a kernel's pod has) and read
    its kernel's view. (works, what it saw). Only for a runtime `resolve`
    accepted: a gVisor start that fails can leave its sandbox processes behind."""
    from docker.errors import APIError, ContainerError, ImageNotFound

    # gVisor's network mode shows in a raw socket's error: --network=host has no
    # raw sockets at all (EAFNOSUPPORT), its own stack refuses them (EPERM) as runc does.
    code = ("import socket, subprocess; v = open('/proc/version').read().strip(); "
            "d = subprocess.run(['dmesg'], capture_output=True, text=True).stdout\n"
            "try:\n socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); n = 'raw'\n"
            "except OSError as e:\n n = 'host' if e.errno == 97 else 'own'\n"
            "print(('gVisor (network: ' + n + '): ' if 'gVisor' in d else '') + v[:60])")
    try:
        out = client.containers.run(image, ["python3", "-c", code], entrypoint=[""], runtime=name or None,
                                    network=network, cap_drop=["ALL"], security_opt=["no-new-privileges"],
                                    user="65534:65534", remove=True, labels={"io.awf-kernel.doctor": "true"},
                                    stderr=True)
    except ImageNotFound:
        return False, f"image {image} is missing (awf-kernel build)"
    except (APIError, ContainerError) as exc:
        return False, str(exc).splitlines()[0][:400]
    return True, out.decode(errors="replace").strip()


def doctor_check(client, name: str, image: str, network: str) -> tuple[bool, str, str]:
    """`awf-kernel doctor`'s line for the runtime setting: (ok, detail, fix)."""
    try:
        rt = vet(name, client.info())
    except (RuntimeMissing, RuntimeRefused) as exc:
        return False, exc.message, exc.hint or ""
    if not name:
        return True, f"engine default '{rt.name}' ({rt.path or rt.runtime_type})", ""
    ok, seen = probe(client, name, image, network)
    if not ok and ROOT_NS_ERROR in seen:
        return False, f"runtime '{name}' did not start a container: {seen}", TOO_OLD_FIX
    if not ok:
        return False, f"runtime '{name}' did not start a container: {seen}", (
            "check the runtime on its own (`docker run --rm --runtime=" + name + " " + image + " true`) and the "
            "engine's log; for gVisor see docs/architecture.md, \"The kernel under gVisor\"")
    if rt.gvisor and not seen.startswith("gVisor"):
        return False, f"runtime '{name}' looks like gVisor but its container does not run under gVisor ({seen})", \
            f"check the path the engine runs for '{name}' (`docker info`)"
    if rt.gvisor and not routed(rt) and not seen.startswith("gVisor (network: host)"):
        return False, f"runtime '{name}' is registered with --network=host, but its container runs gVisor with " \
            f"another network mode ({seen})", gvisor_fix(name) + "; check what the runtime's path runs"
    return True, f"'{name}' starts containers ({seen})", ""
