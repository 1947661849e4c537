"""The server side of awf-kernel's JupyterLab / Notebook 7 extension.

Enabled on install (etc/jupyter/jupyter_server_config.d/awf_kernel.json):
the REST API the browser extension calls (handlers.py) and the post-save hook
that applies a saved notebook's `metadata.awf` to its running kernels (live.py).
The browser part is prebuilt into awf_kernel/labextension and installed to
share/jupyter/labextensions/awf-kernel, so users need no node.
"""

from __future__ import annotations

from .handlers import handlers
from .live import LivePolicy

EXTENSION = "awf_kernel.jupyterlab"


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": EXTENSION}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "../labextension", "dest": "awf-kernel"}]


def _load_jupyter_server_extension(serverapp) -> None:
    live = LivePolicy(serverapp, log=serverapp.log)
    web_app = serverapp.web_app
    web_app.settings["awf_kernel_live"] = live
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.contents_manager.register_post_save_hook(live.post_save)
    serverapp.log.info("awf-kernel: JupyterLab extension loaded (/awf-kernel/api, live policy on save)")
