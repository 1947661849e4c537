"""scripts/test.sh's safety net, tested against hosts of our own.

While tests run, nothing from a Docker bridge may be forwarded off the
machine, except to the beyond host. "Off the machine" is played by a second
namespace behind a veth that is NOT the beyond host's (`awfu*`, a stand-in for
the real uplink): so no packet is aimed at anything real, not even to show it
gets dropped. The net is put up by sourcing scripts/test.sh and calling
`safety_net` in a shell that stays alive until the check is done; its EXIT trap
takes the net down again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from tests.integration import testnet_fixtures as tf

REPO = Path(__file__).resolve().parents[2]
CHAIN = "AWF-TEST-SAFETY-NET"

PROBE = """
import json, socket
res = {}
for name, (host, port) in TARGETS.items():
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); s.sendall(b"GET /safety-net HTTP/1.0\\r\\n\\r\\n"); res[name] = "connected"
    except OSError as e:
        res[name] = type(e).__name__
    finally:
        s.close()
print(json.dumps(res))
"""


def _chain_exists() -> bool:
    return subprocess.run(["iptables", "-w", "-S", CHAIN], capture_output=True).returncode == 0


def _docker_user_rules() -> str:
    """DOCKER-USER only: Docker rewrites its own chains whenever any network comes or goes."""
    return subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True, text=True,
                          check=True).stdout


def _warnings(client) -> list:
    return client.info().get("Warnings") or []


@contextmanager
def safety_net_up():
    """scripts/test.sh's `safety_net`, up until the block ends. The shell's $0
    must not be the sourced path (test.sh would run its `main`: the whole suite)
    and must sit in scripts/ (test.sh cds to $(dirname $0)/..)."""
    proc = subprocess.Popen(["bash", "-c", "source scripts/test.sh && safety_net && echo up && read -r _",
                             "scripts/safety-net-check"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "up", f"safety_net failed: {line}{proc.stderr.read() if proc.poll() is not None else ''}"
        yield
    finally:
        proc.stdin.close()  # `read` ends, the shell exits, its EXIT trap takes the net down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # bash runs its EXIT trap on SIGTERM too
            proc.wait(timeout=30)


def _probe(client, image: str, network: str, targets: dict, label: str) -> dict:
    c = client.containers.create(image, entrypoint=["python3", "-c", f"TARGETS = {targets!r}\n{PROBE}"],
                                 network=network, labels={tf.LABEL: "true", tf.RUN_LABEL: label})
    try:
        c.start()
        assert c.wait(timeout=60)["StatusCode"] == 0, c.logs().decode(errors="replace")
        return json.loads(c.logs(stdout=True, stderr=False).decode().strip().splitlines()[-1])
    finally:
        c.remove(force=True)


@pytest.fixture
def uplink(beyond_host):
    with tf.running_beyond_host(kind=tf.UPLINK_PREFIX) as host:
        yield host


@pytest.fixture
def user_bridge(beyond_host):
    """A user-defined (br-*) network that is not internal, like a pod's egress network could be."""
    client = docker.from_env()
    name = f"awf-testnet-{tf._new_token()}"
    client.networks.create(name, driver="bridge", labels={tf.LABEL: "true", tf.RUN_LABEL: name})
    try:
        yield name
    finally:
        tf.remove_run(client, name)


def test_bridges_reach_the_beyond_host_and_nothing_else_while_tests_run(beyond_host, uplink, user_bridge):
    if _chain_exists():
        pytest.skip("the safety net is already up (this run is under scripts/test.sh): taking it down "
                    "at the end of this test would leave the rest of the run without it")
    client = docker.from_env()
    targets = {"beyond": [beyond_host.ips["allowed.test"], 80], "uplink": [uplink.ips["allowed.test"], 80]}
    rules, warnings = _docker_user_rules(), _warnings(client)

    def probe(network):
        return _probe(client, beyond_host.image, network, targets, beyond_host.netns)

    both = {"beyond": "connected", "uplink": "connected"}
    assert probe("bridge") == both, "without the net, both hosts are reachable (else this test proves nothing)"
    assert probe(user_bridge) == both

    with safety_net_up():
        assert _chain_exists()
        assert _warnings(client) == warnings  # `docker info` sees no change
        mark, up_mark = beyond_host.mark(), uplink.mark()
        cut = {"beyond": "connected", "uplink": "TimeoutError"}
        assert probe("bridge") == cut
        assert probe(user_bridge) == cut
        assert uplink.web_hits("allowed.test", since=up_mark) == []
        assert len([h for h in beyond_host.web_hits("allowed.test", since=mark) if h["event"] == "request"]) == 2
        counters = subprocess.run(["iptables", "-w", "-v", "-x", "-n", "-L", CHAIN], capture_output=True,
                                  text=True).stdout
        drop = [line.split() for line in counters.splitlines() if " DROP " in f" {line} "]
        assert drop and int(drop[0][0]) >= 2, counters  # the SYNs towards the uplink, both bridges

    assert not _chain_exists()
    assert _docker_user_rules() == rules
    assert probe("bridge") == both
