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
