"""Peak memory of a kernel printing 200 MB in 10 MB pieces: stock ipykernel vs iostream.

Each configuration runs in a fresh kernel (through jupyter_client, a client reading
IOPub as a frontend does); the kernel reports its own peak RSS
(``resource.getrusage``) before and after the cell, and the ratio to stock is shown.

    python benchmarks/big_output_memory.py
    python benchmarks/big_output_memory.py --limits 1048576,16777216 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

CELL = 'piece = "z" * 10_000_000\nfor _ in range(20):\n    print(piece)'
# VmHWM: this process's peak RSS in kB (ru_maxrss would include the launcher's,
# inherited across exec).
PEAK = (
    "print('peak', [int(line.split()[1]) for line in open('/proc/self/status')"
    " if line.startswith('VmHWM')][0])"
)


def _run(kc: Any, code: str, timeout: float = 600) -> tuple[str, int, int]:
    """Execute ``code``; return (the last stream line, stream chars, stream messages)."""
    msg_id = kc.execute(code)
    chars = messages = 0
    last = ""
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=timeout)
        except queue.Empty as e:
            raise RuntimeError("the kernel went quiet") from e
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text = msg["content"]["text"]
            chars += len(text)
            messages += 1
            last = text.strip().splitlines()[-1] if text.strip() else last
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return last, chars, messages


def measure(kernel: str, limit: int | None) -> tuple[float, int, int]:
    """(peak RSS growth in MB, stream messages, stream chars) for one fresh kernel."""
    module = ["-m", "ipykernel_launcher"] if kernel == "stock" else ["-m", "iostream", "kernel"]
    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = Path(tmp) / kernel
        spec_dir.mkdir()
        spec = {
            "argv": [sys.executable, *module, "-f", "{connection_file}"],
            "display_name": kernel,
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        km = KernelManager(
            kernel_name=kernel, kernel_spec_manager=KernelSpecManager(kernel_dirs=[tmp])
        )
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            setup = "import sys"
            if limit is not None:
                setup += (
                    f"\nfor s in (sys.stdout, sys.stderr):\n    s.max_message_chars = {limit}"
                    f"\n    s.max_buffer_chars = {limit}"
                )
            _run(kc, setup)
            before = int(_run(kc, PEAK)[0].split()[1])
            _, chars, messages = _run(kc, CELL)
            after = int(_run(kc, PEAK)[0].split()[1])
            print(f"  ({kernel}: peak RSS {before / 1024:.0f} MB before the cell)")
            return after / 1024, messages, chars
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", default="1048576,16777216,67108864")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    configs: list[tuple[str, str, int | None]] = [("stock ipykernel", "stock", None)]
    configs += [
        (f"iostream, {lim} chars", "iostream", lim)
        for lim in (int(x) for x in args.limits.split(","))
    ]
    results: dict[str, list[tuple[float, int]]] = {label: [] for label, _, _ in configs}
    for rep in range(args.repeat):
        for label, kernel, limit in configs:
            growth, messages, _ = measure(kernel, limit)
            results[label].append((growth, messages))
            print(f"run {rep + 1}: {label}: peak RSS {growth:.0f} MB, {messages} messages")
    stock = statistics.median(g for g, _ in results["stock ipykernel"])
    print("\npeak RSS of the kernel for 200 MB in 10 MB pieces (median; ratio to stock)")
    for label, runs in results.items():
        growth = statistics.median(g for g, _ in runs)
        messages = statistics.median(m for _, m in runs)
        print(f"{label:32} {growth:6.0f} MB ({growth / stock:4.2f})  {messages:.0f} messages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
