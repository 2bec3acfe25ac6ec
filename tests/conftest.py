"""Fixtures: real zmq sockets on loopback, a keyed Session, a receiver.

Set ``IOSTREAM_IMPL=ipykernel.iostream`` to run the tests that use the ``impl``
fixture against ipykernel's module instead of ours (to see where it is broken).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import pytest
import zmq

from support import Kernelish, started_kernel


@pytest.fixture(scope="session")
def impl() -> ModuleType:
    """The module under test: ours, or ipykernel's when IOSTREAM_IMPL says so."""
    return importlib.import_module(os.environ.get("IOSTREAM_IMPL", "iostream"))


@pytest.fixture
def kernel(impl: ModuleType) -> Iterator[Kernelish]:
    """A started IOPubThread(pipe=True) on an XPUB socket, with a subscribed receiver."""
    yield from started_kernel(impl, zmq.XPUB)


@pytest.fixture
def pub_kernel(impl: ModuleType) -> Iterator[Kernelish]:
    """Like ``kernel`` but on a plain PUB socket."""
    yield from started_kernel(impl, zmq.PUB)
