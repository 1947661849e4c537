"""Whether this run's kernels run under gVisor (AWF_TEST_RUNTIME naming a gVisor
runtime), for the few answers gVisor gives differently. Each test that uses
it says why the answer differs; what arrives at the test internet is judged
the same way under every runtime."""

from __future__ import annotations

import functools

from tests.integration.conftest import RUNTIME


@functools.lru_cache(maxsize=None)
def under_gvisor() -> bool:
    if not RUNTIME:
        return False
    from awf_kernel import runtime

    return runtime.check(RUNTIME).gvisor


@functools.lru_cache(maxsize=None)
def routed() -> bool:
    """Whether this run's kernels get a namespace of their own, routed through
    the proxy (gVisor's own network stack: awf_kernel/render/link.py), rather
    than the proxy's namespace: the proxy is then at the link's far end, not
    on the kernel's loopback, and the pod has a holder container."""
    if not RUNTIME:
        return False
    from awf_kernel import runtime

    return runtime.routed(runtime.check(RUNTIME))


def pod_roles() -> set[str]:
    """The pod's containers once a kernel runs (the one-shot steps are gone)."""
    return {"proxy", "kernel", "holder"} if routed() else {"proxy", "kernel"}
