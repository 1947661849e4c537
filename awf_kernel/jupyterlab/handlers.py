"""REST API of the JupyterLab side, under /awf-kernel/api/.

    GET  policy?path=NB[&wait=1]   the notebook's sandboxed kernels, what each
                                   enforces, trust, the state label, latest denials
    POST validate {allow_domains, block_domains[, mode][, path]}
                                   the server's grammar (and the kernel's admin
                                   bounds when path has a sandboxed kernel)
    POST check {path, hosts: [...]} whether adding each host to the notebook's
                                   allow_domains would let it through, or why not
    POST confirm {path}            trust the notebook (Jupyter's notary) and apply
                                   the request it was holding

Every handler is an APIHandler behind jupyter_server's authentication and
authorization; a request's input is checked before anything uses it, and
bad input gets a 400 whose `message` says what was wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .. import audit
from . import kernels, lists, trust
from .live import SOURCE_CONFIRM, LivePolicy, os_path_of, same_request

MAX_BODY = 256 * 1024
MAX_HOSTS = 100
LATEST_DENIALS = 20


class BadInput(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


class _Base(APIHandler):
    @property
    def live(self) -> LivePolicy:
        return self.settings["awf_kernel_live"]

    def _fail(self, exc: BadInput) -> None:
        self.set_status(exc.status)
        self.finish(json.dumps({"message": exc.message}))

    def _body(self) -> dict:
        if len(self.request.body or b"") > MAX_BODY:
            raise BadInput(f"request body larger than {MAX_BODY} bytes", 413)
        try:
            body = json.loads(self.request.body or b"")
        except ValueError:
            raise BadInput("the request body must be JSON (an object)") from None
        if not isinstance(body, dict):
            raise BadInput(f"the request body must be a JSON object, not {type(body).__name__}")
        return body

    async def _notebook(self, raw: Any) -> tuple[str, str]:
        """(contents path, file on disk) of an existing notebook, or BadInput."""
        if raw is None or raw == "":
            raise BadInput("path: required: the notebook's path relative to the server's root, "
                           "for example 'work/analysis.ipynb'")
        path = kernels.api_path(raw)
        if path is None or not path.endswith(".ipynb"):
            raise BadInput(f"path: {json.dumps(raw)[:200]} is not a notebook path (relative to the server's "
                           "root, ending in .ipynb)")
        os_path = os_path_of(self.contents_manager, path)
        if os_path is None or not os.path.isfile(os_path):
            raise BadInput(f"path: no notebook {path}", 404)
        await self._served(path)
        return path, os_path

    async def _served(self, path: str) -> None:
        """The contents API would serve it (hidden files only when the server allows them)."""
        cm = self.contents_manager
        if not getattr(cm, "allow_hidden", False) and await ensure_async(cm.is_hidden(path)):
            raise BadInput(f"path: no notebook {path}", 404)

    async def _found(self, path: str):
        return await kernels.notebook_kernels(self.session_manager, self.kernel_manager, path)

    async def _state(self, path: str, os_path: str) -> dict:
        found = await self._found(path)
        trusted = await trust.is_trusted(self.contents_manager, os_path)
        present, awf = await trust.metadata_awf(os_path)
        entries = []
        for kernel_id, provisioner in found:
            try:
                v = kernels.view(provisioner)
            except Exception as exc:  # noqa: BLE001 - show the kernel, say why its policy is unknown
                self.log.exception("awf-kernel %s: policy view failed", kernel_id)
                v = {"error": str(exc)}
            last = self.live.results.get(kernel_id)
            if last and not last.get("ok") and "error" not in v and same_request(v["request"], awf):
                last = None  # the kernel holds what the file asks (fixed and restarted since)
            entries.append({"id": kernel_id, "policy": v, "last_apply": last,
                            "denials": await asyncio.to_thread(_denials, provisioner, kernel_id)})
        first = entries[0] if entries else None
        return {"path": path, "sandboxed": bool(entries), "trusted": trusted,
                "metadata": {"present": present, "awf": awf if isinstance(awf, dict) else None,
                             "expanded": {f: lists.expand(awf.get(f)) for f in lists.FIELDS}
                             if isinstance(awf, dict) else None},
                "kernels": entries, "state": state_label(first)}


def state_label(entry: dict | None) -> dict:
    """The toolbar's text: what the sandbox does now, at a glance."""
    if entry is None:
        return {"kind": "none", "label": "Sandboxed"}
    v = entry["policy"]
    if "error" in v:
        return {"kind": "error", "label": "Sandboxed: policy unknown"}
    if v.get("hub"):
        kind, label = "hub", "Sandboxed: hub mode"
    elif v.get("pending") is not None:
        kind, label = "pending", "Sandboxed: waiting for trust"
    elif v.get("mode") == "record":
        kind, label = "record", "Sandboxed: record mode"
    else:
        n = len(v["effective"]["allow_domains"])
        kind, label = "enforce", f"Sandboxed: {n} domain{'' if n == 1 else 's'}"
    last = entry.get("last_apply")
    if last and not last.get("ok"):
        kind, label = "error", label + " (last save not applied)"
    return {"kind": kind, "label": label}


def _denials(provisioner, kernel_id: str) -> list[dict]:
    """The kernel's latest denied requests, newest first (already escaped by audit)."""
    audit_dir = getattr(provisioner, "audit_dir", None)
    if not audit_dir or provisioner.broker:
        return []
    try:
        recs = audit.records(audit_dir, kernel_id)
    except Exception:  # noqa: BLE001 - no trail yet, or one being rotated: nothing to show
        return []
    denied = [r for r in recs if r.get("decision") == "denied"][-LATEST_DENIALS:]
    keep = ("time", "kind", "host", "port", "reason", "rule", "method")
    return [{k: r.get(k) for k in keep} for r in reversed(denied)]


class PolicyHandler(_Base):
    auth_resource = "kernels"

    @web.authenticated
    @authorized
    async def get(self):
        try:
            path, os_path = await self._notebook(self.get_query_argument("path", None))
        except BadInput as exc:
            return self._fail(exc)
        if self.get_query_argument("wait", "") not in ("", "0", "false"):
            await self.live.settle(path)
        self.finish(json.dumps(await self._state(path, os_path)))


class ValidateHandler(_Base):
    auth_resource = "contents"

    @web.authenticated
    @authorized
    async def post(self):
        try:
            body = self._body()
            unknown = sorted(set(body) - {"allow_domains", "block_domains", "mode", "path"})
            if unknown:
                raise BadInput(f"unknown field {unknown[0]!r}; send allow_domains, block_domains, mode, path")
            bounds = None
            if body.get("path"):
                path, _ = await self._notebook(body["path"])
                found = await self._found(path)
                bounds = kernels.bounds(found[0][1]) if found else None
        except BadInput as exc:
            return self._fail(exc)
        obj = {k: body.get(k) for k in ("allow_domains", "block_domains", "mode") if k in body}
        result = lists.validate(obj, bounds)
        if "mode" in obj and obj["mode"] not in (None, "enforce", "record"):
            result["valid"] = False
            result["errors"].append({"field": "mode", "index": None, "entry": None, "hint": None,
                                     "message": f"awf.mode: {json.dumps(obj['mode'])[:100]} is not one of "
                                                "enforce, record"})
        result["bounds_checked"] = bounds is not None
        self.finish(json.dumps(result))


class CheckHandler(_Base):
    auth_resource = "kernels"

    @web.authenticated
    @authorized
    async def post(self):
        try:
            body = self._body()
            path, os_path = await self._notebook(body.get("path"))
            hosts = body.get("hosts")
            if not isinstance(hosts, list) or not hosts:
                raise BadInput("hosts: required: a non-empty list of host names")
            if len(hosts) > MAX_HOSTS:
                raise BadInput(f"hosts: {len(hosts)} entries; at most {MAX_HOSTS}")
        except BadInput as exc:
            return self._fail(exc)
        found = await self._found(path)
        present, awf = await trust.metadata_awf(os_path)
        request = awf if isinstance(awf, dict) else None
        if not found:
            results = [{**lists.can_allow(h, None, request, None), "allowable": False,
                        "reason": "no sandboxed kernel runs this notebook"} for h in hosts]
            return self.finish(json.dumps({"path": path, "results": results}))
        provisioner = found[0][1]
        v = kernels.view(provisioner)
        bounds = kernels.bounds(provisioner)
        results = []
        for host in hosts:
            r = lists.can_allow(host, bounds, request, v["effective"]["allow_domains"])
            if r["allowable"] and v.get("pending") is not None:
                r = {**r, "allowable": False, "pending": True,
                     "reason": "this notebook is waiting for your trust: confirm the domains it asks for in "
                               "the sandbox panel first"}
            results.append(r)
        self.finish(json.dumps({"path": path, "results": results}))


class ConfirmHandler(_Base):
    auth_resource = "contents"

    @web.authenticated
    @authorized
    async def post(self):
        try:
            body = self._body()
            path, os_path = await self._notebook(body.get("path"))
        except BadInput as exc:
            return self._fail(exc)
        await trust.trust(self.contents_manager, path)
        await self.live.settle(path)
        outcomes = await self.live.apply(path, os_path, SOURCE_CONFIRM, force=True)
        state = await self._state(path, os_path)
        self.finish(json.dumps({**state, "applied": outcomes}))


def handlers(base_url: str) -> list[tuple[str, type]]:
    from jupyter_server.utils import url_path_join

    api = url_path_join(base_url, "awf-kernel", "api")
    return [(url_path_join(api, "policy"), PolicyHandler),
            (url_path_join(api, "validate"), ValidateHandler),
            (url_path_join(api, "check"), CheckHandler),
            (url_path_join(api, "confirm"), ConfirmHandler)]
