"""Live policy: a saved notebook's `metadata.awf` reaches its running kernels.

Only the server side changes a pod's policy: the user saves (or confirms)
in the browser, the contents manager writes the file, and this post-save
hook reads the policy back from the file on disk and hands it to each
sandboxed kernel of that notebook. The kernel cannot take this path: it can
neither write its notebook file (mounted read-only) nor reach the server.

Applying is asynchronous (the pod's Squid and resolver reload), so the hook
only starts it; `settle(path)` waits for it, and `results` keeps the outcome
per kernel for the panel (an error means nothing changed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from ..errors import AWFError, PolicyError
from ..policy_source import request_from_notebook
from . import kernels, trust

SOURCE_SAVE = "saved"
SOURCE_CONFIRM = "trusted and confirmed"


class LivePolicy:
    def __init__(self, serverapp, log: logging.Logger | None = None):
        self.serverapp = serverapp
        self.log = log or logging.getLogger(__name__)
        self.results: dict[str, dict] = {}             # kernel id -> last apply outcome
        self._tasks: dict[str, asyncio.Task] = {}       # notebook path -> apply in flight

    # --- the hook ----------------------------------------------------------------------
    def post_save(self, model: dict, os_path: str, contents_manager: Any, **_: Any) -> None:
        """contents_manager.register_post_save_hook: runs in the server's loop
        after every save; starts applying when the notebook has sandboxed kernels."""
        if not isinstance(model, dict) or model.get("type") != "notebook":
            return
        path = kernels.api_path(model.get("path"))
        if path is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous contents manager called outside the loop
            loop = None
        if loop is None:
            self.log.warning("awf-kernel: %s saved outside the server's event loop; its policy applies "
                             "at the next kernel restart", path)
            return
        self.start(path, os_path, SOURCE_SAVE)

    def start(self, path: str, os_path: str, source: str) -> asyncio.Task:
        previous = self._tasks.get(path)
        task = asyncio.ensure_future(self._apply_after(previous, path, os_path, source))
        self._tasks[path] = task
        task.add_done_callback(lambda t: self._tasks.pop(path, None) if self._tasks.get(path) is t else None)
        return task

    async def settle(self, path: str) -> None:
        """Wait until every apply started for this notebook has ended."""
        while (task := self._tasks.get(path)) is not None:
            await asyncio.wait([task])

    # --- applying ------------------------------------------------------------------------
    async def _apply_after(self, previous: asyncio.Task | None, path: str, os_path: str, source: str) -> None:
        if previous is not None:  # saves apply in order: the last one wins
            await asyncio.wait([previous])
        await self.apply(path, os_path, source)

    async def apply(self, path: str, os_path: str, source: str, *, force: bool = False) -> list[dict]:
        """Give the notebook's on-disk request to each of its sandboxed kernels
        whose request it changes (or all with force). Returns the outcomes."""
        found = await kernels.notebook_kernels(self.serverapp.session_manager, self.serverapp.kernel_manager, path)
        if not found:
            return []
        try:
            request = await asyncio.to_thread(request_from_notebook, os_path)
            error = None
        except PolicyError as exc:
            request, error = None, exc
        trusted = await trust.is_trusted(self.serverapp.contents_manager, os_path)
        outcomes = []
        for kernel_id, provisioner in found:
            if error is None and not force and not self._changes(provisioner, request, trusted):
                continue
            outcome: dict[str, Any] = {"kernel_id": kernel_id, "at": time.time(), "source": source}
            if error is not None:
                outcome.update(ok=False, message=error.message, hint=error.hint)
            else:
                started = time.monotonic()
                try:
                    await kernels.reload(provisioner, request, source=f"notebook {os_path} {source} in JupyterLab",
                                         os_path=os_path, trusted=trusted)
                    outcome.update(ok=True, seconds=round(time.monotonic() - started, 3))
                except AWFError as exc:  # outside the ceiling, hub mode, no pod: nothing changed
                    outcome.update(ok=False, message=exc.message, hint=exc.hint)
                except Exception as exc:  # noqa: BLE001 - the browser must see it; the kernel keeps running
                    self.log.exception("awf-kernel %s: applying the policy of %s failed", kernel_id, path)
                    outcome.update(ok=False, message=f"applying the policy failed: {exc}", hint=None)
            self.log.info("awf-kernel %s: policy of %s applied from %s: %s", kernel_id, path, source,
                          "ok" if outcome["ok"] else outcome["message"])
            self.results[kernel_id] = outcome
            outcomes.append(outcome)
        return outcomes

    @staticmethod
    def _changes(provisioner, request, trusted: bool | None) -> bool:
        """Whether the saved file asks the kernel for something else than it
        holds: another request, or the trust a pending request waited for.
        Unknown: yes (applying again changes nothing, it is only recorded)."""
        try:
            v = kernels.view(provisioner)
        except Exception:  # noqa: BLE001 - a view we cannot read is no reason to skip applying
            return True
        if v["pending"] is not None:
            return bool(trusted) or _key(v["pending"]) != _key(None if request is None else request.written())
        if (getattr(request, "mode", None) or "enforce") != v["mode"]:
            return True
        return _key(v["request"]) != _key(None if request is None else request.written())

    def forget(self, kernel_id: str) -> None:
        self.results.pop(kernel_id, None)


def same_request(held: dict | None, awf) -> bool:
    """The kernel holds what the notebook's awf entry (as on disk) asks for."""
    return _key(held) == _key(awf if isinstance(awf, dict) else None)


def _key(req: dict | None) -> str:
    if req is None:
        return "null"
    return json.dumps({"allow": list(req.get("allow_domains") or ()), "block": list(req.get("block_domains") or ())},
                      sort_keys=True)


def os_path_of(contents_manager, path: str) -> str | None:
    """The file behind a contents path, for file-backed contents managers."""
    getter = getattr(contents_manager, "_get_os_path", None)
    if getter is None:
        return None
    try:
        return os.fspath(getter(path))
    except Exception:  # noqa: BLE001 - jupyter's 404 (outside root, hidden) means "no file"
        return None
