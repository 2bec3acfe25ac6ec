"""Soak: a minute of mixed threads, forks, fd writes and interrupts.

Not part of the default run (``-m "not soak"`` in pyproject); ``tox -e soak`` runs
it. ``IOSTREAM_SOAK_SECONDS`` sets the duration (default 60).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import NOT_LINUX, run_scenario

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.skipif(
        NOT_LINUX,
        reason="Linux only: counts fds through /proc, reads ru_maxrss as KiB, and "
        "also needs os.fork, SIGALRM/setitimer and fd capture",
    ),
]

SECONDS = float(os.environ.get("IOSTREAM_SOAK_SECONDS", "60"))

SCENARIO = """
import os, random, resource, signal, sys, threading, time
from childkit import Setup, open_fds, report

SECONDS = float(sys.argv[2])
k = Setup(slim=True)
out = k.module.OutStream(k.session, k.thread, "stdout", watchfd="force")
err = k.module.OutStream(k.session, k.thread, "stderr", watchfd=False)
# What was written, as counters (a set of every line would be most of the RSS
# growth measured below): each line whose write returned must arrive exactly once.
threads_done = [0, 0, 0, 0]   # T{n}.1 .. T{n}.threads_done[n]
fd_done = [0]                 # F1 .. F{fd_done}
children_done = [0]           # C1.* .. C{children_done}.*
main_done = [0]               # M1 .. M{main_done}, except those in main_unsure
main_unsure = set()           # interrupted around their write: may or may not arrive
stop = threading.Event()

def thread_writer(n):
    i = 0
    out.set_thread_parent({"header": {"msg_id": f"thread{n}"}})
    while not stop.is_set():
        i += 1
        line = f"T{n}.{i}|\\n"
        (out if i % 4 else err).write(line)
        threads_done[n] = i
        if i % 50 == 0:
            (out if i % 4 else err).flush()
        time.sleep(0.0005)

def fd_writer():
    i = 0
    while not stop.is_set():
        i += 1
        line = f"F{i}|\\n"
        os.write(1, line.encode())
        fd_done[0] = i
        time.sleep(0.001)

def forker():
    n = 0
    while not stop.is_set():
        n += 1
        pid = os.fork()
        if pid == 0:
            for j in range(20):
                out.write(f"C{n}.{j}|\\n")
            out.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        children_done[0] = n
        time.sleep(0.02)

armed = [False]
interrupts = [0]
def interrupt(*_):
    if armed[0]:
        armed[0] = False
        interrupts[0] += 1
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)

workers = [threading.Thread(target=thread_writer, args=(n,)) for n in range(4)]
workers += [threading.Thread(target=fd_writer), threading.Thread(target=forker)]
for w in workers:
    w.start()

samples = []
deadline = time.monotonic() + SECONDS
next_sample = time.monotonic() + min(10, SECONDS / 4)
i = 0
signal.setitimer(signal.ITIMER_REAL, 0.003, 0.003)
while time.monotonic() < deadline:
    try:
        armed[0] = True
        while time.monotonic() < deadline:
            i += 1
            line = f"M{i}|\\n"
            out.write(line)
            main_done[0] = i
            if i % 20 == 0:
                out.flush()
            if i % 2000 == 0:
                # Drain the receiver (disarmed: an interrupt in the middle would
                # lose what it read), so zmq's queues do not hold the run's
                # messages and the RSS samples reflect the sender.
                armed[0] = False
                k.poll(0)
                armed[0] = True
            if time.monotonic() > next_sample:
                k.poll(0)
                samples.append((open_fds(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
                next_sample += min(10, SECONDS / 4)
    except KeyboardInterrupt:
        main_unsure.add(i)
    k.poll(0)   # keep the receiver drained so the sender's memory reflects ours
signal.setitimer(signal.ITIMER_REAL, 0, 0)
stop.set()
for w in workers:
    w.join(30)
out.write("END|\\n")
out.flush()
err.flush()
ok = k.wait_for(lambda: "END|" in k.text(), timeout=60)
k.poll(0.5)
lines = [l + "\\n" for l in (k.text("stdout") + k.text("stderr")).split("\\n") if l]
counts = {}
for l in lines:
    counts[l] = counts.get(l, 0) + 1
expected = {f"T{n}.{i}|\\n" for n, last in enumerate(threads_done) for i in range(1, last + 1)}
expected |= {f"F{i}|\\n" for i in range(1, fd_done[0] + 1)}
expected |= {f"C{n}.{j}|\\n" for n in range(1, children_done[0] + 1) for j in range(20)}
expected |= {f"M{i}|\\n" for i in range(1, main_done[0] + 1) if i not in main_unsure}
missing = sorted(expected - set(counts))[:10]
duplicated = sorted(l for l, c in counts.items() if c > 1)[:10]
corrupt = sorted(l for l in counts if not l.endswith("|\\n"))[:10]
report({
    "ok": ok, "missing": missing, "duplicated": duplicated, "corrupt": corrupt,
    "expected": len(expected), "interrupts": interrupts[0], "samples": samples,
    "alive": k.thread.running,
})
"""


def test_soak_mixed_load_loses_nothing_and_does_not_grow(tmp_path: Path) -> None:
    script = SCENARIO.replace("float(sys.argv[2])", repr(SECONDS))
    run = run_scenario(script, tmp_path, timeout=SECONDS * 3 + 120)
    r = run.result
    print("soak:", {key: r[key] for key in ("expected", "interrupts", "samples")})
    assert r["ok"] and r["alive"], r
    assert r["missing"] == [] and r["duplicated"] == [] and r["corrupt"] == [], r
    assert r["expected"] > 1000 and r["interrupts"] > 0, r
    samples = r["samples"]
    assert len(samples) >= 2, r
    # After warm-up, no fd growth and bounded memory growth (maxrss in KiB).
    first_fds, first_rss = samples[0]
    last_fds, last_rss = samples[-1]
    assert last_fds <= first_fds + 2, samples
    assert last_rss - first_rss < 64 * 1024, samples
