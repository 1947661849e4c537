"""The kernel image's `python3 -m ipykernel_launcher`: Debian's, plus the IOPub
welcome of ipykernel 7 (JEP 65), so that a client knows its subscription is live.

Why: a client sees that its IOPub subscription is live only when a message
arrives on IOPub. Debian bookworm's ipykernel 6.17 binds IOPub as a PUB socket,
which drops what it publishes before the subscription has reached it. A new
kernel answers the client's first `kernel_info_request` at once, and the status
messages that go with the reply usually go out before the subscription arrives.
jupyter_client's `wait_for_ready` then waits 0.2 s for an IOPub message and asks
again. Measured (docs/performance.md, "The kernel's own boot"): 0.2 s of every
sandboxed start and restart, against none for a local ipykernel 7.

ipykernel 7 binds an XPUB socket, which sees each subscription, and answers it
with an `iopub_welcome` message. This gives the image's ipykernel the same. An
ipykernel that already does it is launched unchanged. The image installs this
file over Debian's through dpkg-divert (containers/kernel/Dockerfile).
"""

import sys

if __name__ == "__main__":
    # As Debian's launcher: the working directory leaves sys.path before any
    # import, so a notebook's folder cannot shadow the kernel's own modules.
    if sys.path[0] == "":
        del sys.path[0]

    import inspect

    import zmq
    from ipykernel import iostream, kernelapp
    from zmq.eventloop.zmqstream import ZMQStream

    class _XPubContext:
        """The context `init_iopub` makes its socket with, but the PUB made an XPUB."""

        def __init__(self, context: zmq.Context) -> None:
            self._context = context

        def socket(self, kind: int, **kwargs):
            sock = self._context.socket(zmq.XPUB if kind == zmq.PUB else kind, **kwargs)
            if kind == zmq.PUB:
                # Every subscription, not only a topic's first: each client that
                # joins gets its welcome.
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            return sock

    class WelcomingKernelApp(kernelapp.IPKernelApp):
        def init_iopub(self, context):
            super().init_iopub(_XPubContext(context))
            thread = self.iopub_thread
            # The socket belongs to the IOPub thread: listen on its own loop.
            thread.io_loop.add_callback(lambda: ZMQStream(thread.socket, thread.io_loop).on_recv(self._welcome))

        def _welcome(self, frames) -> None:
            sock = self.iopub_thread.socket
            for frame in frames:
                if frame[:1] == b"\x01":  # a subscription (0 would be its end)
                    topic = bytes(frame[1:]).decode("utf-8", "replace")
                    self.session.send(sock, "iopub_welcome", {"subscription": topic})

    if "session" in inspect.signature(iostream.IOPubThread.__init__).parameters:
        kernelapp.launch_new_instance()  # an ipykernel that welcomes by itself
    else:
        WelcomingKernelApp.launch_instance()
