"""What keeping output in the order written costs a write (issue 19).

Before a Python write that begins a line is queued, the stream asks the operating
system whether text waits in its inlets (the fd capture pipes, the forked children's
channel): one system call. This measures the writer's time per ``print(i)`` and per
``write("x")``, in process (the IO thread publishes meanwhile to a PUB socket nobody
reads), for ipykernel's module and ours, in two setups side by side in one run:

* ``plain``: no fd capture, no child channel (nothing to order against);
* ``kernel``: fd capture and a child channel, as a kernel runs, ordering off (the
  library's default, ``OutStream.keep_write_order = False``);
* ``ordered``: the same with ``OutStream.keep_write_order = True``, as
  ``python -m iostream kernel`` runs (ours only: ipykernel has no such thing).

Each figure is the best of ``--repeat`` rounds of ``--n`` calls, in a fresh process.

    python benchmarks/order_cost.py
    python benchmarks/order_cost.py --n 100000 --repeat 7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("ipykernel.iostream", "iostream")
SETUPS = {
    "plain": (False, False, False),
    "kernel": ("force", True, False),
    "ordered": ("force", True, True),
}

CHILD = r"""
import json, os, sys, time, importlib, zmq
from jupyter_client.session import Session
module, watchfd, pipe = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
n, repeat, out, ordered = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7] == "1"
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)  # (what fd capture echoes goes nowhere)
mod = importlib.import_module(module)
if ordered:
    mod.OutStream.keep_write_order = True
ctx = zmq.Context()
sock = ctx.socket(zmq.PUB)
sock.bind_to_random_port("tcp://127.0.0.1")
session = Session(key=b"bench")
try:
    thread = mod.IOPubThread(sock, pipe=pipe, session=session)
except TypeError:  # (ipykernel's takes no session)
    thread = mod.IOPubThread(sock, pipe=pipe)
thread.start()
stream = mod.OutStream(session, thread, "stdout", watchfd=watchfd)

def best(run):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        stream.flush()
    return min(times) / n * 1e9

def prints():
    for i in range(n):
        print(i, file=stream)

def writes():
    write = stream.write
    for _ in range(n):
        write("x")

result = {"print": best(prints), "write": best(writes)}
stream.close()
thread.stop()
with open(out, "w") as f:
    json.dump(result, f)
"""


def measure(module: str, setup: str, n: int, repeat: int) -> dict[str, float]:
    """ns per call of ``print(i)`` and ``write("x")`` in a fresh process."""
    watchfd, pipe, ordered = SETUPS[setup]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, "-c", CHILD, module, json.dumps(watchfd)]
        argv += ["1" if pipe else "0", str(n), str(repeat), str(out), "1" if ordered else "0"]
        subprocess.run(argv, env=env, capture_output=True, timeout=600, check=True)
        result: dict[str, float] = json.loads(out.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    got = {
        (m, s): measure(m, s, args.n, args.repeat)
        for s in SETUPS
        for m in MODULES
        if m == "iostream" or s != "ordered"
    }
    print("| call | setup | ipykernel | ours | ours / ipykernel |")
    print("|---|---|---|---|---|")
    for call, label in (("print", "print(i)"), ("write", 'write("x")')):
        for setup in SETUPS:
            # (ipykernel has no ordering: compare the ordered run with its kernel setup)
            stock = got["ipykernel.iostream", "kernel" if setup == "ordered" else setup][call]
            ours = got["iostream", setup][call]
            print(f"| `{label}` | {setup} | {stock:.0f} ns | {ours:.0f} ns | {ours / stock:.3f} |")
    for call, label in (("print", "print(i)"), ("write", 'write("x")')):
        kernel, ordered = got["iostream", "kernel"][call], got["iostream", "ordered"][call]
        print(
            f"ours, `{label}`: ordering costs {ordered - kernel:.0f} ns a call, "
            f"{(ordered - kernel) / kernel:.0%} of our time without it"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
