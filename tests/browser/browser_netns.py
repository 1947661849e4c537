"""A network namespace of its own for the test browser.

Chromium aborts requests in flight (net::ERR_NETWORK_CHANGED), even to
loopback, whenever the machine's interfaces change, and Docker adds and
removes interfaces each time a pod starts or stops: a browser in the host's
namespace makes the tests flaky. In a namespace of its own, Chromium sees only
its loopback and one end of a veth pair; JupyterLab listens on the other end
(the host side). Nothing else is routed there: the browser can reach the test's
JupyterLab and nothing else.

Names: namespace `awfb-<hex>`, host-side link `awfb<hex>`, tagged (link alias)
with the owning process, so a crashed run's leftovers are removed by the next
run and a live run's never are. Addresses: a free /29 of 198.18.0.0/15 (RFC
2544, for network testing), .1 the host side, .2 the browser.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.testnet_fixtures import _links, _run, owner_alive, owner_tag, pick_subnet

PREFIX = "awfb"


@dataclass
class BrowserNet:
    netns: str
    link: str
    host_ip: str     # where JupyterLab listens (the host side of the veth)
    browser_ip: str

    def wrap(self, executable: str, folder: Path) -> str:
        """A launcher for `executable` inside the namespace (Playwright's executable_path)."""
        script = folder / "chromium-in-netns"
        script.write_text(f'#!/bin/sh\nexec ip netns exec {self.netns} {executable} "$@"\n')
        script.chmod(0o755)
        return str(script)


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _netns() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX + "-")]


def remove(netns: str, link: str) -> None:
    if netns in _netns():
        _run("ip", "netns", "del", netns, check=False)
    if link in _links():
        _run("ip", "link", "del", link, check=False)


def clean_stale() -> None:
    """Remove the namespaces of runs that died without removing them."""
    links = _links()
    tokens = {n.split("-", 1)[1] for n in _netns()}
    tokens |= {n[len(PREFIX):] for n in links if re.fullmatch(PREFIX + "[0-9a-f]{8}", n)}
    for token in tokens:
        link = PREFIX + token
        if link in links and owner_alive(links[link].get("ifalias", "")):
            continue
        if link not in links and f"{PREFIX}-{token}" in _netns():
            continue  # no link yet: maybe a run still setting up; its owner removes it
        remove(f"{PREFIX}-{token}", link)


@contextmanager
def browser_net():
    clean_stale()
    token = secrets.token_hex(4)
    netns, link = f"{PREFIX}-{token}", f"{PREFIX}{token}"
    try:
        net = pick_subnet()
        host_ip, browser_ip = (str(a) for a in list(net.hosts())[:2])
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run("ip", "link", "set", link, "alias", owner_tag())
        _run("sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{link}/disable_ipv6", check=False)
        _run("ip", "addr", "add", f"{host_ip}/{net.prefixlen}", "dev", link)
        _run("ip", "link", "set", link, "up")
        _run("ip", "netns", "exec", netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
             check=False)
        _run("ip", "-n", netns, "addr", "add", f"{browser_ip}/{net.prefixlen}", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        yield BrowserNet(netns, link, host_ip, browser_ip)
    finally:
        remove(netns, link)
