"""The broker client's errors, against a stand-in broker on a unix socket."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from awf_kernel.broker.client import BrokerClient, BrokerError, socket_path


def _serve_once(path: str, answer: bytes, seen: list) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn, srv:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            seen.append(json.loads(data))
            conn.sendall(answer)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_unreachable_says_where_and_what_to_do(tmp_path):
    url = f"unix://{tmp_path}/broker.sock"
    with pytest.raises(BrokerError) as info:
        BrokerClient(url).call("ping")
    assert info.value.code == "unreachable"
    assert str(info.value).startswith(f"cannot reach the broker at {url} (No such file or directory): "
                                      "is it running? (`awf-kernel broker`)")
    with pytest.raises(BrokerError) as info:
        asyncio.run(BrokerClient(url).acall("ping"))
    assert info.value.code == "unreachable" and "is it running?" in info.value.message


@pytest.mark.parametrize("use_async", [False, True])
def test_answers_and_refusals_pass_through(tmp_path, use_async):
    path = str(tmp_path / "b.sock")
    seen: list = []
    t = _serve_once(path, b'{"ok": true, "running": true, "exit_code": null}\n', seen)
    client = BrokerClient(path)
    reply = asyncio.run(client.acall("status", kernel_id="k1")) if use_async else client.call("status", kernel_id="k1")
    t.join(5)
    assert seen == [{"op": "status", "kernel_id": "k1"}]
    assert reply == {"running": True, "exit_code": None}

    path2 = str(tmp_path / "c.sock")
    t = _serve_once(path2, b'{"ok": false, "error": "no such kernel: k1", "code": "no-such-kernel", '
                           b'"hint": "`list` shows your kernels"}\n', [])
    with pytest.raises(BrokerError) as info:
        asyncio.run(BrokerClient(path2).acall("stop", kernel_id="k1")) if use_async else \
            BrokerClient(path2).call("stop", kernel_id="k1")
    t.join(5)
    assert info.value.code == "no-such-kernel" and info.value.hint == "`list` shows your kernels"
    assert info.value.message == "the broker refused 'stop': no such kernel: k1"


def test_a_broker_that_answers_nonsense(tmp_path):
    path = str(tmp_path / "b.sock")
    t = _serve_once(path, b"<html>\n", [])
    with pytest.raises(BrokerError) as info:
        BrokerClient(path).call("ping")
    t.join(5)
    assert info.value.code == "bad-response"


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:1", "unix://relative.sock", "broker.sock"])
def test_addresses_must_be_unix_sockets(url):
    with pytest.raises(BrokerError, match="unix:///"):
        socket_path(url)
