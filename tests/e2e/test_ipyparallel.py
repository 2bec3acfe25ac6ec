"""End-to-end: an ipyparallel cluster whose engines run on iostream (issue 4).

Two clusters are started on localhost, each with one controller and two engines:
one whose engines import iostream in place of ``ipykernel.iostream`` before anything
loads ipykernel (``iostream.integration.install()``, as ``python -m iostream kernel``
does), and one on stock ipykernel for comparison. A ``Client`` runs code on both
engines that prints to stdout and stderr (Python- and fd-level); the output must
arrive at the client attributed to the engine that printed it
(``AsyncResult.stdout`` / ``.stderr``), and on IOPub with the per-engine topics
``engine.N.stdout`` / ``engine.N.stderr`` that ipyparallel's engine sets on
``sys.stdout.topic``. The texts must equal stock ipykernel's.

Every wait is bounded, and the clusters are always torn down: the module fixture
fails if any process it started (controller, engines, their nannies) outlives it.
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ipp = pytest.importorskip("ipyparallel", reason="ipyparallel is not installed (test extra)")

import psutil  # noqa: E402
import zmq  # noqa: E402
from jupyter_client.session import Session  # noqa: E402
from kernel_harness import kernel_env  # noqa: E402

from support import needs_fd_capture  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

N_ENGINES = 2
#: Seconds allowed for the controller's connection files and for engines to register.
START_TIMEOUT = 45.0
#: Seconds allowed for an execution's results, and then for its output to arrive.
RESULT_TIMEOUT = 30.0
OUTPUT_TIMEOUT = 10.0
#: Seconds allowed for every started process to be gone after the clusters stopped.
EXIT_TIMEOUT = 20.0

#: Engine launcher (``python -c LAUNCHER KIND [engine args]``). A kernel is not a test:
#: without PYTEST_CURRENT_TEST both implementations capture the fds. For ``iostream``,
#: ``ipykernel.iostream`` is redirected before ipyparallel imports ipykernel.
ENGINE_LAUNCHER = textwrap.dedent(
    """
    import os, sys
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    kind = sys.argv.pop(1)
    if kind == "iostream":
        from iostream import integration
        integration.install()
    from ipyparallel.engine.app import main
    main()
    """
)

#: Which ``sys.stdout`` module each kind of engine must have.
EXPECTED_MODULE = {"iostream": "iostream", "ipykernel": "ipykernel.iostream"}

#: Runs on every engine; ``{module}`` is the required module prefix, ``{fd}`` true to
#: also write to fd 1. Python-level output is flushed before the engine reports idle.
#: fd output is read by another thread and may legitimately arrive after idle (in
#: both implementations), by which time ipyparallel's AsyncResult has stopped
#: collecting (the client drops the request's metadata once every engine is idle).
OUTPUT_CODE = textwrap.dedent(
    """
    import os, sys
    eid = get_ipython().kernel.engine_id
    module = type(sys.stdout).__module__
    assert module.startswith({module!r}), module
    print(f"hello from engine {{eid}}")
    print(f"stderr from engine {{eid}}", file=sys.stderr)
    sys.stdout.write(f"no newline {{eid}}")
    if {fd}:
        sys.stdout.flush()
        os.write(1, f"\\nfd from engine {{eid}}\\n".encode())
    """
)


def output_code(kind: str, *, fd: bool) -> str:
    return OUTPUT_CODE.format(module=EXPECTED_MODULE[kind], fd=fd)


def expected_stdout(eid: int, *, fd: bool) -> str:
    text = f"hello from engine {eid}\nno newline {eid}"
    return text + f"\nfd from engine {eid}\n" if fd else text


def expected_stderr(eid: int) -> str:
    return f"stderr from engine {eid}\n"


class RunningCluster:
    """One controller and ``N_ENGINES`` local engines of ``kind``, plus a Client."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.profile_dir = root / f"profile-{kind}"
        self.client: Any = None
        self._new_cluster()

    def _new_cluster(self) -> None:
        self.cluster = ipp.Cluster(
            n=N_ENGINES,
            profile_dir=str(self.profile_dir),
            cluster_id=f"e2e-{self.kind}-{uuid.uuid4().hex[:8]}",
            controller_ip="127.0.0.1",
            delay=0,
            engine_timeout=int(START_TIMEOUT),
            log_level=logging.WARNING,
        )
        config = self.cluster.config
        config.LocalControllerLauncher.connection_info_timeout = START_TIMEOUT
        config.LocalEngineSetLauncher.engine_cmd = [
            sys.executable,
            "-c",
            ENGINE_LAUNCHER,
            self.kind,
        ]
        # the engines import the same iostream as these tests
        config.LocalEngineSetLauncher.environment = {"PYTHONPATH": kernel_env()["PYTHONPATH"]}

    def start(self) -> None:
        """Start the controller and engines, connect, wait for the engines (bounded).

        Started once more, as a new cluster, if the controller lost a race for a
        port: ipyparallel picks free ports and binds them later, in other
        processes (seen in CI: "Address already in use" from its heart monitor,
        while the other cluster started beside it). Any other failure fails."""
        for attempt in (1, 2):
            try:
                self.client = self.cluster.start_and_connect_sync(n=N_ENGINES)
                assert len(self.client.ids) == N_ENGINES, self.client.ids
                return
            except BaseException as e:
                logs = self.logs()
                if attempt == 1 and "Address already in use" in logs:
                    self.stop()
                    self.client = None
                    self._new_cluster()
                    continue
                raise RuntimeError(f"{self.kind} cluster did not start: {e!r}\n{logs}") from e

    def logs(self) -> str:
        """The tails of the controller's and engines' own output (removed on stop)."""
        parts = []
        for path in sorted((self.profile_dir / "log").glob("*.log")):
            text = path.read_text(encoding="utf-8", errors="replace")
            parts.append(f"--- {path.name} ---\n{text[-3000:]}")
        return "\n".join(parts) or "(no logs)"

    def stop(self) -> None:
        """Close the client and stop engines and controller (TERM, then KILL)."""
        try:
            if self.client is not None:
                self.client.close(linger=0)
        finally:
            self.cluster.stop_cluster_sync()

    def iopub_url(self) -> str:
        """The controller's IOPub address for clients (from its connection file)."""
        path = Path(self.cluster.controller.connection_files["client"])
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"{info['interface']}:{info['iopub']}"

    def execute(self, code: str) -> Any:
        """Run ``code`` on every engine; wait (bounded) for results and idle status."""
        ar = self.client[:].execute(code, block=False)
        ar.get(timeout=RESULT_TIMEOUT)
        assert ar.wait_for_output(timeout=RESULT_TIMEOUT), f"{self.kind}: no idle status"
        return ar


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningCluster]]:
    """Both clusters, started concurrently; torn down with a check for stray processes."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    root = tmp_path_factory.mktemp("ipyparallel")
    running = {kind: RunningCluster(kind, root) for kind in EXPECTED_MODULE}
    pool = ThreadPoolExecutor(len(running), thread_name_prefix="e2e-ipp")
    try:
        starts = [pool.submit(c.start) for c in running.values()]
        for f in starts:
            f.result(timeout=3 * START_TIMEOUT)
        yield running
    finally:
        # every process we started, taken while engines still hold their nannies
        spawned = [p for p in me.children(recursive=True) if p.pid not in before]
        stops = [pool.submit(c.stop) for c in running.values()]
        errors = []
        for f in stops:
            try:
                f.result(timeout=EXIT_TIMEOUT + 60)
            except Exception as e:  # still check for and kill leftovers below
                errors.append(repr(e))
        pool.shutdown(wait=False)
        _gone, alive = psutil.wait_procs(spawned, timeout=EXIT_TIMEOUT)
        leftovers = []
        for p in alive:
            try:
                leftovers.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        assert not leftovers, f"processes outlived the clusters: {leftovers}"
        assert not errors, f"stopping a cluster failed: {errors}"


# ---------------------------------------------------------------------------


def test_engines_run_on_iostream(clusters: dict[str, RunningCluster]) -> None:
    code = textwrap.dedent(
        """
        import sys, ipykernel.iostream
        kernel = get_ipython().kernel
        modules = (
            type(sys.stdout).__module__,
            type(sys.stderr).__module__,
            type(kernel.iopub_socket).__module__,
            ipykernel.iostream.__name__,
        )
        topics = (sys.stdout.topic, sys.stderr.topic)
        """
    )
    for kind, c in clusters.items():
        c.execute(code)
        view = c.client[:]
        modules = view.pull("modules", block=False).get(timeout=RESULT_TIMEOUT)
        topics = view.pull("topics", block=False).get(timeout=RESULT_TIMEOUT)
        want = EXPECTED_MODULE[kind]
        for eid, mods, tops in zip(view.targets, modules, topics, strict=True):
            assert all(m.startswith(want) for m in mods), (kind, eid, mods)
            assert tops == (f"engine.{eid}.stdout".encode(), f"engine.{eid}.stderr".encode())
        if kind == "iostream":
            assert all(m[3] == "iostream" for m in modules), modules  # the module itself


def test_output_arrives_at_client_per_engine(clusters: dict[str, RunningCluster]) -> None:
    texts = {}
    for kind, c in clusters.items():
        ar = c.execute(output_code(kind, fd=False))
        eids = ar.engine_id
        assert sorted(eids) == sorted(c.client.ids), eids
        want_out = [expected_stdout(eid, fd=False) for eid in eids]
        want_err = [expected_stderr(eid) for eid in eids]
        assert ar.stdout == want_out, (kind, ar.stdout, c.logs())
        assert ar.stderr == want_err, (kind, ar.stderr, c.logs())
        texts[kind] = {
            eid: (out, err) for eid, out, err in zip(eids, ar.stdout, ar.stderr, strict=True)
        }
    assert texts["iostream"] == texts["ipykernel"]


def _receive(sub: zmq.Socket[bytes], session: Session, timeout: float) -> tuple[bytes, dict] | None:
    """One message from ``sub`` as (topic, msg), or None if none came in time.

    ``session`` must be our own (with the client's key): the client's session has
    already seen each signature and would reject the message as a replay.
    """
    if not sub.poll(int(timeout * 1000)):
        return None
    frames = sub.recv_multipart()
    idents, msg_list = session.feed_identities(frames)
    msg: dict[str, Any] = session.deserialize(msg_list)  # checks the signature
    return (idents[0] if idents else b""), msg


@needs_fd_capture  # the engines also write to fd 1 (fd=True)
def test_output_topics_name_the_engine(clusters: dict[str, RunningCluster]) -> None:
    texts = {}
    for kind, c in clusters.items():
        ids = c.client.ids
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        key = c.client.session.key
        session = Session(key=key, signature_scheme=c.client.session.signature_scheme)
        try:
            # only the per-engine stream topics: output published under any
            # other topic (e.g. plain "stream.stdout") is never received
            for eid in ids:
                for name in ("stdout", "stderr"):
                    sub.subscribe(f"engine.{eid}.{name}".encode())
            sub.connect(c.iopub_url())
            _wait_subscribed(c, sub, session, ids)

            ar = c.execute(output_code(kind, fd=True))
            engine_of = dict(zip(ar.msg_ids, ar.engine_id, strict=True))
            got: dict[tuple[int, str], str] = {
                (eid, n): "" for eid in ids for n in ("stdout", "stderr")
            }
            want = {}
            for eid in ids:
                want[(eid, "stdout")] = expected_stdout(eid, fd=True)
                want[(eid, "stderr")] = expected_stderr(eid)
            end = time.monotonic() + OUTPUT_TIMEOUT
            while got != want and time.monotonic() < end:
                received = _receive(sub, session, 0.1)
                if received is None:
                    continue
                topic, msg = received
                parent = msg["parent_header"].get("msg_id")
                if parent not in engine_of:
                    continue  # e.g. output of the subscription warm-up
                assert msg["msg_type"] == "stream", msg
                eid, name = engine_of[parent], msg["content"]["name"]
                assert topic == f"engine.{eid}.{name}".encode(), (kind, topic, msg["content"])
                got[(eid, name)] += msg["content"]["text"]
            assert got == want, (kind, c.logs())
            texts[kind] = got
        finally:
            sub.close(linger=0)
            context.term()
    assert texts["iostream"] == texts["ipykernel"]


def _wait_subscribed(
    c: RunningCluster, sub: zmq.Socket[bytes], session: Session, ids: list[int]
) -> None:
    """Print on every engine until ``sub`` receives it from each (bounded).

    A new subscription takes a moment to reach the controller's publisher; what is
    published before is not received. Only then can a test rely on ``sub``.
    """
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        token = uuid.uuid4().hex
        c.execute(f"print({token!r})")
        seen: set[bytes] = set()
        round_end = min(end, time.monotonic() + 1.0)
        while time.monotonic() < round_end and len(seen) < len(ids):
            received = _receive(sub, session, 0.1)
            if received is not None and token in received[1]["content"].get("text", ""):
                seen.add(received[0])
        if len(seen) == len(ids):
            return
    raise AssertionError(f"{c.kind}: the IOPub subscription never took effect\n{c.logs()}")
