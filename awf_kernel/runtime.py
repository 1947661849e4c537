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
sends the kernel's packets past every rule (measured against the test
internet: a blocked host, the canary on any port and DNS to any server were
all reached; 127.0.0.1:3128 is gVisor's own loopback, so the proxy is
unreachable). See docs/architecture.md, "The kernel under gVisor".

So a runtime is accepted only when the engine's own registration shows it is
one of those; anything else (gVisor's netstack, a gVisor shim whose flags live
in a file the engine does not show, Kata's VM with its own kernel, a runtime
we do not know) is refused at kernel start, before any container exists.
Pure decisions here (`judge`); `check` asks the engine.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

from .errors import AWFError

# Runtimes whose container processes use the host kernel directly (by the
# basename of the binary the engine runs).
HOST_KERNEL = ("runc", "crun", "youki")
# The registration that keeps the pod's rules in force under gVisor.
GVISOR_EXAMPLE = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}}
DAEMON_JSON = "/etc/docker/daemon.json"
RELOAD = "`sudo kill -HUP $(pidof dockerd)` (or `sudo systemctl reload docker`)"


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


def judge(rt: EngineRuntime) -> str | None:
    """None when the pod's rules see every packet of a container under `rt`;
    otherwise why not (one sentence, for an error message)."""
    if rt.gvisor:
        network = rt.gvisor_network
        if network == "host":
            return None
        if rt.runtime_type and not rt.path:
            return (f"'{rt.name}' is gVisor registered as a containerd shim ({rt.runtime_type}); its network mode "
                    "lives in the shim's own config, which the engine does not show, so awf-kernel cannot tell "
                    "whether the pod's rules would see the kernel's packets")
        if network == "none":
            return (f"'{rt.name}' is gVisor with --network=none: the kernel would have no network at all, not "
                    "even the published ports Jupyter talks to it through")
        return (f"'{rt.name}' is gVisor with its own network stack (--network={network}): the kernel's packets "
                "would leave through gVisor's netstack, past the pod's iptables rules and its proxy (measured: a "
                "blocked host, other ports and DNS to any server were reached, and 127.0.0.1:3128 was gVisor's "
                "own loopback, not the proxy)")
    base = posixpath.basename(rt.path) if rt.path else (rt.name if not rt.runtime_type else "")
    if base in HOST_KERNEL or rt.runtime_type == "io.containerd.runc.v2":
        return None
    return (f"'{rt.name}' ({rt.path or rt.runtime_type or 'no path'}) is not a runtime awf-kernel knows to keep the "
            "pod's rules in force: they see the kernel's packets only when its sockets are the host kernel's, in the "
            f"proxy's network namespace ({', '.join(HOST_KERNEL)}, or gVisor with --network=host)")


def gvisor_fix(name: str) -> str:
    return (f"register gVisor with its host network mode in {DAEMON_JSON}: "
            f"{json.dumps({'runtimes': {name: GVISOR_EXAMPLE['runsc']}})} (merge with what is there), then reload "
            f"the engine with {RELOAD}. Then every socket of the kernel is a host socket in the pod's namespace, "
            "where the pod's rules apply (docs/architecture.md, \"The kernel under gVisor\")")


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
            hint=gvisor_fix(rt.name) if rt.gvisor else
            "set AWFProvisioner.runtime to runc, or to gVisor registered with --network=host")
    return rt


def check(name: str) -> EngineRuntime:
    """`resolve` against the engine this process talks to (blocking: call from a worker thread)."""
    from .sandbox.docker import client

    return resolve(name, client().info())


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
        rt = resolve(name, client.info())
    except (RuntimeMissing, RuntimeRefused) as exc:
        return False, exc.message, exc.hint or ""
    if not name:
        return True, f"engine default '{rt.name}' ({rt.path or rt.runtime_type})", ""
    ok, seen = probe(client, name, image, network)
    if not ok:
        return False, f"runtime '{name}' did not start a container: {seen}", (
            "check the runtime on its own (`docker run --rm --runtime=" + name + " " + image + " true`) and the "
            "engine's log; for gVisor see docs/architecture.md, \"The kernel under gVisor\"")
    if rt.gvisor and not seen.startswith("gVisor"):
        return False, f"runtime '{name}' looks like gVisor but its container does not run under gVisor ({seen})", \
            f"check the path the engine runs for '{name}' (`docker info`)"
    if rt.gvisor and not seen.startswith("gVisor (network: host)"):
        return False, f"runtime '{name}' is registered with --network=host, but its container runs gVisor with " \
            f"another network mode ({seen})", gvisor_fix(name) + "; check what the runtime's path runs"
    return True, f"'{name}' starts containers ({seen})", ""
