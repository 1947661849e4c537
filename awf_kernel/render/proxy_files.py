"""The proxy's policy files as one versioned unit.

A pod's policy changes while it runs (a pool pod claimed by a kernel, a
notebook saved with new `metadata.awf`), so Squid and the resolver must be
seen to answer by the *same* files. Both carry one generation, a digest of
their content, which the proxy's reload step checks before it reports
success (containers/proxy/reload.sh).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from ..policy import Policy
from .resolver import render_resolver_config
from .squid import render_squid_conf


def render_proxy_files(policy: Policy, *, kernel_id: str, notebook: str | None, upstreams: Iterable[str],
                       allowed_private: Iterable[str]) -> tuple[dict[str, bytes], str]:
    """(files for /etc/awf, generation)."""
    private = list(allowed_private)
    squid = render_squid_conf(policy, kernel_id=kernel_id, notebook=notebook, allowed_private=private)
    resolver = json.loads(render_resolver_config(policy, kernel_id=kernel_id, upstreams=list(upstreams),
                                                 notebook=notebook, allowed_private=private))
    digest = hashlib.sha256(squid.encode() + json.dumps(resolver, sort_keys=True).encode()).hexdigest()[:16]
    resolver["generation"] = digest
    files = {
        "squid.conf": (squid.rstrip("\n") + f"\n# generation {digest}\n").encode(),
        "resolver.json": json.dumps(resolver, indent=1, sort_keys=True).encode(),
    }
    return files, digest
