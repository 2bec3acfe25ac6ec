"""Fixtures for the end-to-end tests: shared and fresh real kernels (see kernel_harness)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kernel_harness import OURS_ARGV, Kernel, KernelPair

from iostream.app.kernelspec import THREAD_INHERIT_CONTEXT

#: Our kernel with ``--thread-inherit-context``: threads (and forked children)
#: print into the cell that started them.
OPT_IN_ARGV = [*OURS_ARGV[:4], THREAD_INHERIT_CONTEXT, *OURS_ARGV[4:]]


@pytest.fixture(scope="session")
def kernels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel-logs")


@pytest.fixture(scope="session")
def pair(kernels_dir: Path, log_dir: Path) -> Iterator[KernelPair]:
    """Shared kernels (ours and stock), started concurrently, for the stateless cases."""
    with ThreadPoolExecutor(2) as pool:
        fo = pool.submit(Kernel, "iostream", kernels_dir, log_dir)
        fs = pool.submit(Kernel, "ipykernel", kernels_dir, log_dir)
        ours, stock = fo.result(), fs.result()
    p = KernelPair(ours, stock)
    yield p
    p.close()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(Kernel.shutdown, [ours, stock]))


@pytest.fixture
def fresh_kernel(
    kernels_dir: Path, log_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Kernel]:
    """A kernel of kind ``request.param`` of its own, for tests that disturb it."""
    k = Kernel(request.param, kernels_dir, log_dir)
    yield k
    k.shutdown()


@pytest.fixture
def opt_in(kernels_dir: Path, log_dir: Path) -> Iterator[Kernel]:
    """A fresh kernel with ``--thread-inherit-context``."""
    k = Kernel("iostream-inherit", kernels_dir, log_dir, argv=OPT_IN_ARGV)
    yield k
    k.shutdown()
