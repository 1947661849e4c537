"""papermill engine `awf` (`papermill --engine awf in.ipynb out.ipynb`).

Papermill executes an in-memory notebook (parameters injected, maybe read
from S3 or HTTP), so there is no file for the provisioner to read: this
engine hands that notebook's `metadata.awf` to the kernel's launcher as
`AWF_POLICY`, the same way any launching side does.
"""

from __future__ import annotations

import json
import os

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine
from papermill.log import logger
from papermill.utils import merge_kwargs, remove_args

from .kernelspec import KERNEL_NAME
from .policy_source import POLICY_ENV


def launch_env(nb, base: dict[str, str] | None = None) -> dict[str, str]:
    """The launcher environment for a notebook: its metadata.awf as AWF_POLICY."""
    env = dict(os.environ if base is None else base)
    env[POLICY_ENV] = json.dumps(nb.metadata.get("awf", {}))
    return env


class AWFEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                 stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs):
        kernel_name = kernel_name if (kernel_name or "").startswith("awf") else KERNEL_NAME
        kwargs = remove_args(["input_path"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(
            safe_kwargs,
            timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=logger,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
        )
        client = PapermillNotebookClient(nb_man, **final_kwargs)
        return client.execute(env=launch_env(nb_man.nb))
