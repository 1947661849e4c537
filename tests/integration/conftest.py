"""Fixtures for tests against the real engine: images, the test internet,
kernel specs pointing at it, and running sandboxed kernels."""

from __future__ import annotations

import json
import os
import queue
import textwrap
import uuid

import docker
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from awf_kernel import kernelspec, naming
from awf_kernel.images import IMAGES, build
from awf_kernel.sandbox import docker as sandbox
from awf_kernel.sandbox.pool import POOL
from tests.conftest import require_docker
from tests.integration.testnet_fixtures import (  # noqa: F401
    beyond_host, beyond_listener, host_listener, metadata_guard, testnet)

ALLOW = ["allowed.test", "*.allowed.test", "other.test"]
# The warm pool (AWFProvisioner.pool_size) for every kernel of the suite: 0 by
# default; scripts/test.sh runs the security and conformance suites a second
# time with AWF_TEST_POOL_SIZE=1, so they judge pooled pods too.
POOL_SIZE = int(os.environ.get("AWF_TEST_POOL_SIZE", "0"))
# The kernel container's runtime (AWFProvisioner.runtime) for every kernel of
# the suite: '' (the engine's default) unless AWF_TEST_RUNTIME names one;
# scripts/test.sh runs the security, lifecycle and conformance suites a second
# time with AWF_TEST_RUNTIME=runsc (gVisor), judged by the same test internet.
RUNTIME = os.environ.get("AWF_TEST_RUNTIME", "")


def pod_ids(km) -> set[str]:
    """The ids a kernel's resources are labelled with: its own and, when it
    runs in a warm pool pod, that pod's (known to its provisioner)."""
    return {km.kernel_id} | ({km.provisioner._pod_id} if getattr(km.provisioner, "_pod_id", None) else set())


def pod_resources(docker_client, km) -> tuple[list, list]:
    """(containers, networks) of a kernel's pod, pool pods included."""
    ids = pod_ids(km)
    return ([c for i in sorted(ids) for c in docker_client.containers.list(all=True, filters=naming.kernel_filter(i))],
            [n for i in sorted(ids) for n in docker_client.networks.list(filters=naming.kernel_filter(i))])


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client():
    require_docker()
    return docker.from_env()


@pytest.fixture(scope="session")
def awf_images(docker_client):
    """The sandbox images, built once (Docker's cache makes this instant when unchanged)."""
    build()
    return IMAGES


@pytest.fixture(scope="session")
def spec_dir(tmp_path_factory, testnet, awf_images):
    """A kernel spec installed the way a user would (`awf-kernel install --set`),
    pointed at the test internet."""
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    kernelspec.install(prefix=str(prefix), settings={
        "egress_network": testnet.network,
        "dns_servers": [testnet.dns_ip],
        "startup_timeout": 60.0,
        # The test internet lives on a private Docker network: its web hosts
        # are opted in one by one, as an admin opts in an intranet site. The
        # canary, the DNS server and the Docker host stay out of reach.
        "allow_private_destinations": web_host_ranges(testnet),
        "pool_size": POOL_SIZE,
        **({"runtime": RUNTIME} if RUNTIME else {}),
    })
    yield prefix / "share" / "jupyter" / "kernels"
    POOL.close()  # the pool's pods sit on the test internet: gone before it is
    POOL.reopen()


def web_host_ranges(net) -> list[str]:
    from tests.integration.testnet_fixtures import WEB_HOSTS
    return [f"{net.ips[host]}/32" for host in WEB_HOSTS]


@pytest.fixture
def no_leftovers(docker_client):
    """Asserts that a test left no container or network of the project behind."""
    before = {c.id for c in docker_client.containers.list(all=True, filters=naming.kernel_filter())}
    yield
    sandbox.wait_for_removals()  # pods go in the background once their kernels ended
    after = {c.id for c in docker_client.containers.list(all=True, filters=naming.kernel_filter())}
    assert after - before - _ready_pool_containers() == set(), "a test left sandbox containers behind"


def _ready_pool_containers() -> set[str]:
    """Containers of the pool's ready (never claimed) pods: the pool's, not a test's."""
    with POOL._lock:
        return {r.pod.proxy_id for pods in POOL._ready.values() for r in pods}


class Kernel:
    """A sandboxed kernel and a blocking client, with helpers to run code."""

    def __init__(self, km: KernelManager):
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    @property
    def kernel_id(self) -> str:
        return self.km.kernel_id

    def run(self, code: str, timeout: float = 60) -> dict:
        """Execute code; returns {'stdout', 'stderr', 'error', 'outputs'}."""
        outputs = []
        reply = self.kc.execute_interactive(textwrap.dedent(code), timeout=timeout,
                                            output_hook=outputs.append, allow_stdin=False)
        out = {"stdout": "", "stderr": "", "error": None, "outputs": outputs, "reply": reply}
        for msg in outputs:
            t, c = msg["msg_type"], msg["content"]
            if t == "stream":
                out[c["name"]] += c["text"]
            elif t == "error":
                out["error"] = f"{c['ename']}: {c['evalue']}"
        return out

    def probe(self, *parts: str, timeout: float = 60):
        """Run code (parts dedented one by one) whose last stdout line is JSON; return it parsed."""
        res = self.run("\n".join(textwrap.dedent(p) for p in parts), timeout)
        assert res["error"] is None, res["error"] + res["stderr"]
        return json.loads(res["stdout"].strip().splitlines()[-1])

    def shutdown(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)
        sandbox.wait_for_removals()  # the pod goes in the background once the kernel has ended


@pytest.fixture
def start_kernel(spec_dir, monkeypatch):
    """Factory: start_kernel(policy={...}, settings={...}) -> Kernel. All are shut down at teardown."""
    started: list[Kernel] = []

    def start(policy: dict | None = None, settings: dict | None = None, cwd: str | None = None,
              env: dict | None = None, **km_kwargs) -> Kernel:
        ksm = KernelSpecManager(kernel_dirs=[str(spec_dir)])
        if settings:
            name = f"awf-python-{uuid.uuid4().hex[:6]}"
            kernelspec.install(prefix=str(spec_dir.parent.parent.parent), name=name,
                               settings={**_spec_config(spec_dir), **settings})
        else:
            name = kernelspec.KERNEL_NAME
        km = KernelManager(kernel_name=name, kernel_spec_manager=ksm, **km_kwargs)
        launch_env = dict(env or {"LANG": "C.UTF-8"})
        if policy is not None:
            launch_env["AWF_POLICY"] = json.dumps(policy)
        km.start_kernel(env=launch_env, cwd=cwd)
        try:
            k = Kernel(km)
        except BaseException:
            km.shutdown_kernel(now=True)
            raise
        started.append(k)
        return k

    yield start
    for k in started:
        try:
            k.shutdown()
        except Exception:  # noqa: BLE001 - already dead kernels still get cleaned below
            k.km.cleanup_resources()


def _spec_config(spec_dir) -> dict:
    with open(spec_dir / kernelspec.KERNEL_NAME / "kernel.json") as f:
        return json.load(f)["metadata"]["kernel_provisioner"]["config"]


@pytest.fixture
def kernel(start_kernel):
    """One sandboxed kernel allowed to reach allowed.test (+ subdomains) and other.test."""
    return start_kernel(policy={"allow_domains": ALLOW})


def drain(q: queue.Queue) -> list:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items
