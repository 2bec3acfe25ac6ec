"""Run ipykernel on iostream: your own kernel launcher, and a client that runs a cell on it.

`python ipykernel_swap.py` writes a kernelspec whose argv runs this file as the kernel
(`ipykernel_swap.py kernel -f CONNECTION_FILE`), starts it through jupyter_client,
runs one cell, prints what the kernel published, and shuts the kernel down.

`python -m iostream kernel` and `python -m iostream install` do the same for you;
this is what to write when the kernel needs a launcher of its own.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CELL = """\
import os, sys
import iostream
print("sys.stdout is an iostream.OutStream:", isinstance(sys.stdout, iostream.OutStream))
print("to stderr", file=sys.stderr)
os.system("echo from a subprocess")  # fd-level output is captured too
6 * 7
"""


def launch_kernel(argv: list[str]) -> None:
    """The kernel process: swap iostream in, then start ipykernel as usual."""
    import iostream

    iostream.install()  # before anything imports ipykernel's kernel machinery

    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    config = Config()
    # ipykernel.iostream.OutStream (the default) is iostream.OutStream now; naming
    # it directly says so. Capturing fds publishes what C code and subprocesses write.
    config.IPKernelApp.outstream_class = "iostream.OutStream"
    config.IPKernelApp.capture_fd_output = True
    IPKernelApp.launch_instance(argv=argv, config=config)


def show(msg: dict[str, Any]) -> None:
    """Print an output message of the cell the way a frontend would show it."""
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        print(f"{content['name']}: {content['text']!r}")
    elif kind == "execute_result":
        print(f"result: {content['data']['text/plain']}")
    elif kind == "error":
        print(f"error: {content['ename']}: {content['evalue']}")


def run_cell() -> None:
    """The client: start the kernel from a temporary kernelspec and run CELL."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory() as kernels:
        spec_dir = Path(kernels, "iostream-example")
        spec_dir.mkdir()
        spec = {
            "argv": [sys.executable, __file__, "kernel", "-f", "{connection_file}"],
            "display_name": "Python 3 (iostream example)",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))

        manager = KernelManager(
            kernel_name="iostream-example",
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]),
        )
        # A captured fd is also echoed to the kernel's own terminal: keep that out.
        manager.start_kernel(stdout=subprocess.DEVNULL)
        client = manager.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            reply = client.execute_interactive(CELL, output_hook=show, timeout=60)
            print(f"status: {reply['content']['status']}")
        finally:
            client.stop_channels()
            manager.shutdown_kernel()


if __name__ == "__main__":
    if sys.argv[1:2] == ["kernel"]:
        launch_kernel(sys.argv[2:])
    else:
        run_cell()
