"""What the kernel spec's `argv` runs: nothing but a refusal.

A tool that ignores kernel provisioners would run `argv` directly and get an
unsandboxed kernel; instead it gets this message and a non-zero exit (fail closed).
"""

import sys

MESSAGE = """awf-kernel: refusing to start an unsandboxed kernel.
The kernel spec 'awf-python' must be started through its kernel provisioner
('awf-provisioner', jupyter_client >= 7), which runs the kernel in a Docker
sandbox. This tool launched the spec's argv directly instead.
Use Jupyter Server/JupyterLab, nbclient, nbval or jupyter_client >= 7."""


def main() -> int:
    print(MESSAGE, file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
