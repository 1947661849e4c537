"""Building the sandbox images from the build contexts shipped in the package."""

from __future__ import annotations

import sys
from importlib.resources import as_file, files

from docker.errors import APIError, BuildError, ImageNotFound

from . import __version__
from .errors import AWFError
from .sandbox.docker import client

IMAGES = {
    "proxy": f"awf-kernel/proxy:{__version__}",
    "kernel": f"awf-kernel/kernel:{__version__}",
}
BASE_IMAGE = "debian:bookworm-slim"


class BuildFailed(AWFError):
    pass


def ensure_base(out=sys.stderr) -> None:
    c = client()
    try:
        c.images.get(BASE_IMAGE)
        return
    except ImageNotFound:
        pass
    print(f"[awf-build] pulling {BASE_IMAGE}", file=out)
    try:
        c.images.pull(BASE_IMAGE)
    except APIError as exc:
        raise BuildFailed(f"base image {BASE_IMAGE} is not present and cannot be pulled ({exc.explanation})",
                          hint="connect to a registry, or create it locally: "
                               "scripts/ensure-docker.sh (debootstrap + docker import)") from None


def build(names=None, out=sys.stderr) -> dict[str, str]:
    """Build the images (Docker's layer cache makes an unchanged rebuild instant).
    Progress lines stream to `out`."""
    ensure_base(out)
    built = {}
    for name in names or IMAGES:
        tag = IMAGES[name]
        with as_file(files("awf_kernel") / "containers" / name) as context:
            print(f"[awf-build] building {tag} from {context}", file=out, flush=True)
            try:
                stream = client().api.build(path=str(context), tag=tag, rm=True, decode=True,
                                            labels={"io.awf-kernel.image": name})
                for chunk in stream:
                    if "stream" in chunk and chunk["stream"].strip():
                        print(f"[awf-build {name}] {chunk['stream'].rstrip()}", file=out, flush=True)
                    if "error" in chunk:
                        raise BuildFailed(f"building {tag} failed: {chunk['error'].strip()}",
                                          hint="read the build output above")
            except (APIError, BuildError) as exc:
                raise BuildFailed(f"building {tag} failed: {exc}", hint="read the build output above") from None
        built[name] = tag
    return built
