"""`awf-kernel broker`: the one process that talks to Docker in hub mode.

An asyncio unix-socket server. Every connection carries one request
(awf_kernel.broker.protocol); who sent it is the socket's peer credentials,
never anything in the request. A user sees and acts on their own kernels only:
another user's kernel is "no such kernel", exactly like one that does not
exist. One uid may have `requests_per_user` requests in flight and must send
its request within `request_timeout`, so no user can tie the broker up for
the others. Docker and filesystem work runs in worker threads; the event loop
only reads, dispatches and answers. No input can crash it: anything that goes
wrong becomes an error response and a log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import time
from typing import TypeVar

from .. import __version__
from ..audit import safe_text
from ..errors import AWFError, PolicyError
from ..sandbox import docker as sandbox
from . import config as broker_config
from . import identity, launch, linger, pods, protocol, userside
from .launch import KernelRecord

log = logging.getLogger("awf_kernel.broker")
T = TypeVar("T")


def _required(value: T | None, name: str) -> T:
    """A field the op's schema requires (parse_request made sure it is there)."""
    if value is None:
        raise protocol.ProtocolError(f"{name} is missing")
    return value


def _no_such(kernel_id: str | None) -> dict:
    return protocol.error(f"no such kernel: {kernel_id}", "no-such-kernel",
                          hint="`list` shows your kernels")


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Bytes up to the first newline (or the end, if the client closed its
    side first); ProtocolError beyond MAX_REQUEST."""
    buf = bytearray()
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk
        end = buf.find(b"\n")
        if end >= 0:
            if end > protocol.MAX_REQUEST:
                break
            return bytes(buf[:end])
        if len(buf) > protocol.MAX_REQUEST:
            break
    raise protocol.ProtocolError(f"request is larger than {protocol.MAX_REQUEST} bytes",
                                 hint="a start request is a few kilobytes; check what the client sends")


REAP_INTERVAL = 1.0  # seconds between looks for kernels whose server is gone


class Broker:
    def __init__(self, cfg: broker_config.BrokerConfig):
        self.cfg = cfg
        self.table: dict[str, KernelRecord] = {}
        self.inflight: dict[int, int] = {}
        self.holder = launch.holder()
        self._server: asyncio.base_events.Server | None = None
        self._reaper: asyncio.Task | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._setup)
        self._server = await self._listen()
        await self.reap()
        self._reaper = asyncio.create_task(self._reap_loop())
        mine = {r.owner_uid for r in self.table.values()}
        log.info("awf-kernel broker %s listening on %s (%d kernels of %d users found running)",
                 __version__, self.cfg.socket_path, len(self.table), len(mine))

    def _setup(self) -> None:
        if os.geteuid() != 0:
            log.warning("not running as root: kernel folders are checked and placeholders made with the "
                        "broker's own rights, and audit folders are not the owners'")
        launch.prepare_dirs(self.cfg)
        sandbox.client()  # the engine must be there before any user is told the broker is
        self.table = pods.rebuild(self.cfg)
        pods.rehold(self.cfg, self.table, self.holder)

    async def _listen(self) -> asyncio.base_events.Server:
        path = self.cfg.socket_path
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise AWFError(f"{path} exists and is not a socket", hint="remove it or set BrokerConfig.socket_path")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # a previous broker's socket
            else:
                raise AWFError(f"another broker is listening on {path}", hint="stop it first")
            finally:
                probe.close()
        server = await asyncio.start_unix_server(self._handle, path=path, limit=protocol.MAX_REQUEST + 2)
        os.chmod(path, 0o666)  # every local user may ask; SO_PEERCRED says who they are
        for parent in _parents(path):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                log.warning("%s is not searchable by other users: they cannot reach the socket", parent)
        return server

    async def reap(self) -> list[str]:
        """Remove the pods of kernels whose Jupyter server exited without
        stopping them. Returns their kernel ids."""
        gone = [r for r in list(self.table.values()) if r.state == "running" and launch.client_gone(r)]
        for rec in gone:
            log.info("uid=%d: kernel %s: its Jupyter server (pid %d) is gone; removing its pod",
                     rec.owner_uid, rec.kernel_id, rec.client_pid)
            try:
                await self._stop(rec)
            except Exception:  # noqa: BLE001 - tried again at the next round
                log.exception("removing the pod of kernel %s failed", rec.kernel_id)
        return [r.kernel_id for r in gone]

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            await self.reap()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        # Kernels whose servers already exited go now; those of live servers are
        # handed to the watcher after close (JupyterHub stops its services before
        # its users' servers: see awf_kernel.broker.linger).
        await self.reap()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            os.unlink(self.cfg.socket_path)
        except FileNotFoundError:
            pass

    # --- one connection -------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = identity.peer_of(writer.get_extra_info("socket"))
        except OSError:
            writer.close()
            return
        if self.inflight.get(peer.uid, 0) >= self.cfg.requests_per_user:
            response = protocol.error(f"uid {peer.uid} has {self.cfg.requests_per_user} requests in flight already",
                                      "busy", hint="wait for them to finish and try again")
            self._log(peer, "?", None, response)
            await self._respond(writer, response)
            return
        self.inflight[peer.uid] = self.inflight.get(peer.uid, 0) + 1
        op, kernel_id = "?", None
        try:
            try:
                data = await asyncio.wait_for(read_request(reader), self.cfg.request_timeout)
                req = protocol.parse_request(data)
                op, kernel_id = req.op, req.kernel_id
                response = await getattr(self, f"_op_{req.op}")(peer, req)
            except asyncio.TimeoutError:
                response = protocol.error(f"no complete request within {self.cfg.request_timeout:g} s", "bad-request")
            except protocol.ProtocolError as exc:
                response = protocol.error(exc.message, exc.code, exc.hint)
            except Exception:  # noqa: BLE001 - the broker never dies of one request
                log.exception("uid=%d op=%s kernel=%s: internal error", peer.uid, op, kernel_id)
                response = protocol.error("internal error in the broker (see its log)", "internal")
            self._log(peer, op, kernel_id, response)
            await self._respond(writer, response)
        finally:
            left = self.inflight.get(peer.uid, 1) - 1
            if left:
                self.inflight[peer.uid] = left
            else:
                self.inflight.pop(peer.uid, None)

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, response: dict) -> None:
        """Answer and close; a client that went away gets nothing, and that is fine."""
        try:
            writer.write(protocol.encode(response))
            await asyncio.wait_for(writer.drain(), 30)
        except (OSError, asyncio.TimeoutError, RuntimeError):
            pass
        finally:
            try:
                writer.close()
            except (OSError, RuntimeError):
                pass

    @staticmethod
    def _log(peer: identity.Peer, op: str, kernel_id: str | None, response: dict) -> None:
        result = "ok" if response.get("ok") else f"{response.get('code')}: {safe_text(response.get('error'))[:300]}"
        log.info("uid=%d pid=%d op=%s kernel=%s result=%s", peer.uid, peer.pid, op, kernel_id or "-", result)

    def _own(self, peer: identity.Peer, kernel_id: str | None) -> KernelRecord | None:
        """The kernel if the caller may act on it (its owner, or root)."""
        rec = self.table.get(kernel_id or "")
        if rec is None or (peer.uid != 0 and rec.owner_uid != peer.uid):
            return None
        return rec

    # --- ops -----------------------------------------------------------------------------------------
    async def _op_ping(self, peer: identity.Peer, req: protocol.Request) -> dict:
        return protocol.ok(version=protocol.VERSION, broker=__version__, uid=peer.uid)

    async def _op_start(self, peer: identity.Peer, req: protocol.Request) -> dict:
        try:
            user = identity.user_for(peer.uid, self.cfg.min_uid)
        except identity.NotAllowed as exc:
            return protocol.error(str(exc), "refused")
        ucfg = self.cfg.for_user(user.name, user.groups)
        start = _required(req.start, "start")
        kid = start.kernel_id
        in_use = protocol.error(f"kernel id {kid} is in use", "refused", hint="start with a new kernel id")
        if kid in self.table:
            return in_use
        mine = sum(1 for r in self.table.values() if r.owner_uid == user.uid)
        if mine >= ucfg.kernels_per_user:
            return protocol.error(f"you have {mine} kernels; at most {ucfg.kernels_per_user} may run at once",
                                  "limit", hint="shut down a kernel you no longer need, then try again")
        self.table[kid] = KernelRecord(kid, user.uid, user.gid, user.gids, created=time.time(), state="starting")
        try:
            if await asyncio.to_thread(pods.id_taken, kid):
                self.table.pop(kid, None)
                return in_use
            record, info = await asyncio.to_thread(launch.start, start, user, ucfg, self.holder)
        except (PolicyError, launch.StartRefused, userside.Refused) as exc:
            self.table.pop(kid, None)
            return protocol.error(getattr(exc, "message", str(exc)), "refused", getattr(exc, "hint", None))
        except AWFError as exc:
            self.table.pop(kid, None)
            return protocol.error(exc.message, "failed", exc.hint)
        except Exception as exc:  # noqa: BLE001 - e.g. an engine error; nothing was left behind
            self.table.pop(kid, None)
            log.exception("uid=%d: start of %s failed", user.uid, kid)
            return protocol.error(f"the kernel's pod could not be made: {safe_text(str(exc))[:500]}", "failed")
        except BaseException:
            self.table.pop(kid, None)
            raise
        record.client_pid, record.client_start = peer.pid, launch.process_start(peer.pid) or 0
        await asyncio.to_thread(launch.save_record, launch.paths_for(self.cfg, kid, user.uid), record)
        self.table[kid] = record
        return protocol.ok(kernel_id=kid, ip="127.0.0.1", transport="tcp", **record.ports,
                           signature_scheme=start.signature_scheme, **info)

    async def _op_status(self, peer: identity.Peer, req: protocol.Request) -> dict:
        rec = self._own(peer, req.kernel_id)
        if rec is None:
            return _no_such(req.kernel_id)
        if rec.state != "running":
            return protocol.ok(running=rec.state == "starting", exit_code=None, state=rec.state)
        running, code = await asyncio.to_thread(pods.status, rec)
        return protocol.ok(running=running, exit_code=code, state=rec.state)

    def _own_running(self, peer: identity.Peer, kernel_id: str | None) -> KernelRecord | dict:
        """The caller's running kernel, or the error to answer with."""
        rec = self._own(peer, kernel_id)
        if rec is None:
            return _no_such(kernel_id)
        if rec.state != "running":
            return protocol.error(f"kernel {rec.kernel_id} is {rec.state}", "busy", hint="try again in a moment")
        return rec

    async def _op_signal(self, peer: identity.Peer, req: protocol.Request) -> dict:
        rec = self._own_running(peer, req.kernel_id)
        if isinstance(rec, dict):
            return rec
        await asyncio.to_thread(pods.send_signal, rec, _required(req.signal, "signal"))
        return protocol.ok()

    async def _op_policy(self, peer: identity.Peer, req: protocol.Request) -> dict:
        """Live policy: the owner's server sends the notebook's new request;
        the broker's bounds for that user decide, as at start."""
        rec = self._own_running(peer, req.kernel_id)
        if isinstance(rec, dict):
            return rec
        try:
            user = identity.user_for(rec.owner_uid, self.cfg.min_uid)
        except identity.NotAllowed as exc:
            return protocol.error(str(exc), "refused")
        ucfg = self.cfg.for_user(user.name, user.groups)
        try:
            policy = await asyncio.to_thread(launch.change_policy, ucfg, rec, req.policy)
        except PolicyError as exc:
            return protocol.error(exc.message, "refused", exc.hint)
        except AWFError as exc:
            return protocol.error(exc.message, "failed", exc.hint)
        log.info("uid=%d: kernel %s policy now %s", rec.owner_uid, rec.kernel_id, policy.to_json())
        return protocol.ok(policy=policy.to_json())

    async def _op_stop(self, peer: identity.Peer, req: protocol.Request) -> dict:
        rec = self._own_running(peer, req.kernel_id)
        if isinstance(rec, dict):
            return rec
        kept = await self._stop(rec)
        return protocol.ok(kept=kept)

    async def _stop(self, rec: KernelRecord) -> list[str]:
        rec.state = "stopping"
        try:
            kept = await asyncio.to_thread(pods.stop, self.cfg, rec.kernel_id, rec.owner_uid, rec.owner_gid,
                                           rec.owner_gids)
        except BaseException:
            rec.state = "running"  # the pod may still be there: it can be stopped again
            raise
        self.table.pop(rec.kernel_id, None)
        return kept

    async def _op_list(self, peer: identity.Peer, req: protocol.Request) -> dict:
        recs = [r for r in self.table.values() if peer.uid == 0 or r.owner_uid == peer.uid]
        out = []
        for rec in sorted(recs, key=lambda r: r.created):
            item = rec.public()
            if rec.state == "running":
                item["running"], item["exit_code"] = await asyncio.to_thread(pods.status, rec)
            if peer.uid == 0:
                item["owner_uid"] = rec.owner_uid
            out.append(item)
        return protocol.ok(kernels=out)

    async def _op_logs(self, peer: identity.Peer, req: protocol.Request) -> dict:
        kid = _required(req.kernel_id, "kernel_id")
        rec = self.table.get(kid)
        if rec is not None and self._own(peer, kid) is None:
            return _no_such(kid)
        gid = 0  # root reads with its own rights
        gids: tuple[int, ...] = ()
        if peer.uid != 0:
            try:
                user = identity.user_for(peer.uid, self.cfg.min_uid)
            except identity.NotAllowed:
                return _no_such(kid)
            gid, gids = user.gid, user.gids
        try:
            found = await asyncio.to_thread(pods.read_logs, self.cfg, kid, peer.uid, gid, gids, req.limit)
        except userside.Refused:
            found = None
        if found is None:
            return _no_such(kid)
        return protocol.ok(kernel_id=kid, records=found["records"], total=found["total"])

    async def _op_gc(self, peer: identity.Peer, req: protocol.Request) -> dict:
        removed = []
        for rec in [r for r in self.table.values() if peer.uid == 0 or r.owner_uid == peer.uid]:
            if rec.state != "running":
                continue
            running, _ = await asyncio.to_thread(pods.status, rec)
            if not running and rec.state == "running":
                await self._stop(rec)
                removed.append(rec.kernel_id)
        for kid, saved in (await asyncio.to_thread(pods.orphans, self.cfg, self.table)).items():
            recorded = saved.get("owner_uid")
            owner = recorded if isinstance(recorded, int) else pods.NOBODY
            if kid in self.table or (peer.uid != 0 and owner != peer.uid):
                continue
            await asyncio.to_thread(pods.stop, self.cfg, kid, owner, int(saved.get("owner_gid") or 0),
                                    tuple(saved.get("owner_gids") or ()))
            removed.append(kid)
        return protocol.ok(removed=removed)


def _parents(path: str) -> list[str]:
    out, d = [], os.path.dirname(os.path.abspath(path))
    while True:
        out.append(d)
        if d == "/":
            return out
        d = os.path.dirname(d)


async def serve(cfg: broker_config.BrokerConfig, stop: asyncio.Event) -> None:
    """Run a broker until `stop` is set; its kernels keep running after it."""
    broker = Broker(cfg)
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.close()
        # A hub stops its services before its users' servers: what those
        # servers leave when they exit is removed by a watcher (linger.py).
        linger.hand_over(cfg, broker.table.values())
        log.info("awf-kernel broker stopped (its kernels keep running; the next broker takes them over)")


def main(config_file: str | None = None, socket_path: str | None = None) -> int:
    """`awf-kernel broker`: load the config, serve until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="[awf-broker] %(asctime)s %(levelname)s %(message)s")
    cfg = broker_config.load(config_file, socket_path)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    asyncio.run(run())
    return 0
