"""`awf-kernel doctor`: each check says what is wrong and the command that fixes it."""

from __future__ import annotations

from dataclasses import dataclass

from . import __version__


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks() -> list[Check]:
    from docker.errors import APIError, ImageNotFound, NotFound

    from .errors import AWFError
    from .images import BASE_IMAGE, IMAGES
    from .kernelspec import KERNEL_NAME, PROVISIONER_NAME
    from .sandbox.docker import client

    checks: list[Check] = []
    broker = _spec_settings(KERNEL_NAME).get("broker")
    if broker:
        # Hub mode: this side never talks to Docker; the broker is what must work.
        return _spec_checks(KERNEL_NAME, PROVISIONER_NAME) + [broker_check(broker)]
    try:
        c = client()
        checks.append(Check("docker", True, f"engine {c.version().get('Version', '?')} reachable"))
    except AWFError as exc:
        checks.append(Check("docker", False, str(exc).splitlines()[0], exc.hint or ""))
        return checks + _spec_checks(KERNEL_NAME, PROVISIONER_NAME)

    for name, tag in IMAGES.items():
        try:
            c.images.get(tag)
            checks.append(Check(f"image {name}", True, tag))
        except ImageNotFound:
            try:
                c.images.get(BASE_IMAGE)
                fix = "awf-kernel build"
            except ImageNotFound:
                fix = f"get {BASE_IMAGE} (docker pull, or scripts/ensure-docker.sh offline), then awf-kernel build"
            checks.append(Check(f"image {name}", False, f"{tag} is missing", fix))

    checks.extend(_spec_checks(KERNEL_NAME, PROVISIONER_NAME))
    settings = _spec_settings(KERNEL_NAME)
    net = settings.get("egress_network", "bridge")
    try:
        c.networks.get(net)
        checks.append(Check("egress network", True, net))
    except NotFound:
        checks.append(Check("egress network", False, f"Docker network '{net}' does not exist",
                            f"docker network create {net}, or awf-kernel install --set egress_network=NAME"))

    from .runtime import doctor_check

    ok, detail, fix = doctor_check(c, str(settings.get("runtime", "")), str(settings.get("image", IMAGES["kernel"])),
                                   net)
    checks.append(Check("runtime", ok, detail, fix))

    proxy = IMAGES["proxy"]
    try:
        # The firewall step needs the nat table (REDIRECT) inside a container's namespace.
        c.containers.run(proxy, entrypoint=["iptables", "-t", "nat", "-L", "-n"], user="0:0",
                         cap_drop=["ALL"], cap_add=["NET_ADMIN", "NET_RAW"], network_mode="none",
                         remove=True, command=[], labels={"io.awf-kernel.doctor": "true"}, stderr=True)
        checks.append(Check("host iptables", True, "iptables (nat table) works inside a container"))
    except ImageNotFound:
        pass
    except (APIError, Exception) as exc:  # ContainerError carries the output
        checks.append(Check("host iptables", False, f"iptables failed in a container: {exc}",
                            "load the kernel's netfilter modules (modprobe iptable_nat ip_tables) or use a "
                            "Docker engine on Linux with iptables support"))
    return checks


def broker_check(url: str) -> Check:
    """Hub mode: the broker answers, and says who this user is to it."""
    from .broker.client import BrokerClient, BrokerError

    try:
        reply = BrokerClient(url).call("ping")
    except BrokerError as exc:
        return Check("broker", False, exc.message.splitlines()[0],
                     exc.hint or "ask the hub's operator to start the broker (`awf-kernel broker`)")
    return Check("broker", True, f"{url} answers (broker {reply.get('broker', '?')}, you are uid {reply.get('uid')})")


def _spec_settings(kernel_name: str) -> dict:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        return {}
    return spec.metadata.get("kernel_provisioner", {}).get("config", {}) or {}


def _spec_checks(kernel_name: str, provisioner_name: str) -> list[Check]:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    out = []
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
        prov = spec.metadata.get("kernel_provisioner", {}).get("provisioner_name")
        if prov != provisioner_name:
            out.append(Check("kernel spec", False, f"{kernel_name} does not name {provisioner_name}",
                             "awf-kernel install --user"))
        else:
            out.append(Check("kernel spec", True, f"{kernel_name} in {spec.resource_dir}"))
    except NoSuchKernel:
        out.append(Check("kernel spec", False, f"kernel spec {kernel_name} is not installed",
                         "awf-kernel install --user"))
    factory = KernelProvisionerFactory.instance()
    if provisioner_name in factory.provisioners:
        out.append(Check("provisioner", True, f"{provisioner_name} entry point registered (awf-kernel {__version__})"))
    else:
        out.append(Check("provisioner", False, f"entry point {provisioner_name} not found", "pip install awf-kernel"))
    return out
