"""Where a kernel's policy request comes from (the side-effect half of policy).

Order: `AWF_POLICY` (JSON, set by the launching side: nbclient, papermill, the
nbval plugin, scripts) wins over the notebook file named by
`JPY_SESSION_NAME` (set by Jupyter Server). Neither known: no request, so
the admin policy alone applies (deny all by default).
"""

from __future__ import annotations

import json
import logging
import os

from .errors import PolicyError
from .policy import PolicyRequest, parse_request, parse_request_json

POLICY_ENV = "AWF_POLICY"
SESSION_ENV = "JPY_SESSION_NAME"
# "1": the launcher runs the notebook named by SESSION_ENV on purpose (nbval's
# plugin), which is consent to its metadata.awf like AWF_POLICY is.
CONSENT_ENV = "AWF_NOTEBOOK_CONSENT"
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024


def load_request(env: dict[str, str], *, root_dir: str | None = None,
                 log: logging.Logger | None = None) -> PolicyRequest | None:
    return load_request_from(env, root_dir=root_dir, log=log)[0]


def load_request_from(env: dict[str, str], *, root_dir: str | None = None,
                      log: logging.Logger | None = None) -> tuple[PolicyRequest | None, str | None]:
    """(request, the notebook file it was read from). A request from
    AWF_POLICY has no file: the launcher chose it, which is explicit consent;
    one read from a notebook file is the file's (see awf_kernel.trust)."""
    log = log or logging.getLogger(__name__)
    if env.get(POLICY_ENV):
        return parse_request_json(env[POLICY_ENV], source=POLICY_ENV), None
    session = env.get(SESSION_ENV)
    if not session:
        return None, None
    path = notebook_path(session, root_dir)
    if path is None:
        log.warning("awf-kernel: %s=%r is not a notebook under the server's root dir; "
                    "using the admin policy only", SESSION_ENV, session)
        return None, None
    return request_from_notebook(path), path


def notebook_path(session: str, root_dir: str | None) -> str | None:
    """The notebook file a session name points to, or None when it is not an
    existing .ipynb inside the server's root dir (consoles, bare kernels)."""
    root = os.path.realpath(root_dir or os.getcwd())
    candidate = session if os.path.isabs(session) else os.path.join(root, session)
    path = os.path.realpath(candidate)
    if not path.endswith(".ipynb") or not os.path.isfile(path):
        return None
    if root_dir and os.path.commonpath([root, path]) != root:
        return None
    return path


def request_from_notebook(path: str) -> PolicyRequest | None:
    source = f"notebook {path}"
    if os.path.getsize(path) > MAX_NOTEBOOK_BYTES:
        raise PolicyError(f"{source}: file is larger than {MAX_NOTEBOOK_BYTES} bytes",
                          hint="set AWF_POLICY instead of reading the policy from this notebook")
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{source}: cannot read notebook ({exc})", hint="fix or re-save the notebook") from None
    return request_from_metadata(nb.get("metadata") if isinstance(nb, dict) else None, source)


def request_from_metadata(metadata, source: str) -> PolicyRequest | None:
    """The notebook's `metadata.awf` as a request; no `awf` key means no request."""
    if not isinstance(metadata, dict) or "awf" not in metadata:
        return None
    return parse_request(metadata["awf"], source=source + " metadata awf")
