"""Talking to the broker: one request per connection, blocking or async.

    from awf_kernel.broker.client import BrokerClient
    reply = BrokerClient("unix:///run/awf-kernel/broker.sock").call("ping")
    reply = await BrokerClient(url).acall("status", kernel_id=kid)

`call` returns the broker's answer (a dict, without "ok") or raises
`BrokerError`: the broker cannot be reached (with what to do about it), or
it refused the request (its reason, `code` and `hint` passed through).
There is no fallback: a provisioner in hub mode that cannot reach the broker
starts no kernel. Only the standard library and awf_kernel.errors are used.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from ..errors import AWFError

DEFAULT_URL = "unix:///run/awf-kernel/broker.sock"
MAX_RESPONSE = 8 * 1024 * 1024
# Seconds to wait for an answer; a start waits for the pod (startup_timeout
# on the broker) plus the image and folder checks.
TIMEOUTS = {"start": 300.0, "stop": 120.0, "gc": 600.0}
DEFAULT_TIMEOUT = 60.0


class BrokerError(AWFError):
    """The broker refused a request or could not be reached.
    `code`: the broker's (bad-request, refused, no-such-kernel, limit, busy,
    failed, internal), or "unreachable" / "bad-response" from this side."""

    def __init__(self, message: str, code: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.code = code


def socket_path(url: str) -> str:
    """`unix:///run/x.sock` (or a plain absolute path) -> the socket's path."""
    if url.startswith("unix://"):
        path = url[len("unix://"):]
    elif url.startswith("/"):
        path = url
    else:
        raise BrokerError(f"broker address {url!r} is not unix:///path/to/broker.sock", "unreachable",
                          hint=f"set it like {DEFAULT_URL}")
    if not path.startswith("/"):
        raise BrokerError(f"broker address {url!r}: the socket path must be absolute", "unreachable",
                          hint=f"set it like {DEFAULT_URL}")
    return path


def _unreachable(url: str, exc: OSError) -> BrokerError:
    return BrokerError(f"cannot reach the broker at {url} ({exc.strerror or exc}): is it running? "
                       "(`awf-kernel broker`)", "unreachable",
                       hint="ask the operator to start it (e.g. `systemctl start awf-kernel-broker`)")


def _request(op: str, fields: dict[str, Any]) -> bytes:
    return json.dumps({"op": op, **fields}, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def _answer(url: str, op: str, data: bytes) -> dict:
    try:
        reply = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise BrokerError(f"the broker at {url} gave no valid answer to {op!r}"
                          + ("" if data else " (it closed the connection)"), "bad-response")
    if not reply["ok"]:
        raise BrokerError(f"the broker refused {op!r}: {reply.get('error') or 'no reason given'}",
                          str(reply.get("code") or "refused"), reply.get("hint") or None)
    reply.pop("ok")
    return reply


class BrokerClient:
    def __init__(self, url: str = DEFAULT_URL, timeout: float | None = None):
        self.url = url
        self.path = socket_path(url)
        self.timeout = timeout

    def _timeout(self, op: str) -> float:
        return self.timeout if self.timeout is not None else TIMEOUTS.get(op, DEFAULT_TIMEOUT)

    def call(self, op: str, **fields: Any) -> dict:
        """One request, blocking."""
        payload = _request(op, fields)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self._timeout(op))
            try:
                sock.connect(self.path)
            except OSError as exc:
                raise _unreachable(self.url, exc) from None
            data = b""
            try:
                sock.sendall(payload)
                while len(data) <= MAX_RESPONSE and not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except socket.timeout:
                raise BrokerError(f"the broker at {self.url} did not answer {op!r} within "
                                  f"{self._timeout(op):.0f} s", "unreachable") from None
            except OSError as exc:
                if not data:
                    raise BrokerError(f"lost the connection to the broker at {self.url} ({exc.strerror or exc})",
                                      "unreachable") from None
        return _answer(self.url, op, data)

    async def acall(self, op: str, **fields: Any) -> dict:
        """One request, without blocking the event loop."""
        try:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_RESPONSE + 1)
        except OSError as exc:
            raise _unreachable(self.url, exc) from None
        try:
            writer.write(_request(op, fields))
            await writer.drain()
            data = await asyncio.wait_for(reader.readline(), self._timeout(op))
        except asyncio.TimeoutError:
            raise BrokerError(f"the broker at {self.url} did not answer {op!r} within "
                              f"{self._timeout(op):.0f} s", "unreachable") from None
        except (OSError, ValueError) as exc:
            raise BrokerError(f"lost the connection to the broker at {self.url} ({exc})", "unreachable") from None
        finally:
            writer.close()
        return _answer(self.url, op, data)
