"""Errors a user can act on. Each formats its own message and names its fix
(`hint`); the CLI and the provisioner show both, and nothing else maps them."""

from __future__ import annotations

from traitlets import TraitError


class AWFError(Exception):
    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\nHint: {self.hint}" if self.hint else "")


class PolicyError(AWFError):
    """A bad domain entry or malformed policy metadata."""

    hint = "fix the entry; the grammar is host, *.host (subdomains) or .host (both)"


class CeilingError(PolicyError):
    """A notebook asked for more than the admin's domain_ceiling permits."""


class InvalidSetting(AWFError, TraitError):
    """A provisioner setting refused when it is set (server config, kernel
    spec, `awf-kernel install --set`): a TraitError to traitlets, so config
    loading reports it as any other bad value."""


# --- sandbox ------------------------------------------------------------------


class DockerUnavailable(AWFError):
    def __init__(self, detail: str):
        super().__init__(f"cannot reach the Docker engine ({detail})",
                         hint="start Docker (Docker Desktop, or `sudo systemctl start docker`), "
                              "check DOCKER_HOST, then run `awf-kernel doctor`")


class ImageMissing(AWFError):
    def __init__(self, image: str, setting: str):
        super().__init__(f"image '{image}' (setting {setting}) is not present on the Docker engine",
                         hint="run `awf-kernel build`, or set AWFProvisioner."
                              f"{setting} to an image that exists (`docker images`)")


class NetworkMissing(AWFError):
    def __init__(self, network: str):
        super().__init__(f"egress_network '{network}' does not exist on the Docker engine",
                         hint=f"create it (`docker network create {network}`) or change "
                              "AWFProvisioner.egress_network (`awf-kernel install --set egress_network=NAME`)")


class PortClash(AWFError):
    def __init__(self, port: int | None):
        where = f"port {port}" if port else "one of the kernel's ports"
        super().__init__(f"{where} on 127.0.0.1 is already in use; the kernel's pod could not publish it",
                         hint="stop whatever holds the port (`ss -ltnp`), or let Jupyter choose free "
                              "ports (do not pin shell_port etc.), then start the kernel again")
        self.port = port


class SandboxStartError(AWFError):
    """The pod could not be made; `logs` carries what its containers said."""

    def __init__(self, message: str, hint: str | None = None, logs: str = ""):
        super().__init__(message + (f"\n--- pod logs ---\n{logs.rstrip()}" if logs else ""),
                         hint=hint or "run `awf-kernel doctor`; `awf-kernel gc` removes anything left over")
