"""Fixtures for the browser tests: one JupyterLab server and one Chromium per module.

Everything is skipped, with the reason, when Chromium, Playwright or JupyterLab is
missing (see :func:`labkit.missing_requirements`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from labkit import JupyterLab, launch_chromium, missing_requirements

MISSING = missing_requirements()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """A running ``jupyter lab`` with the iostream, iostream-optin and python3 kernelspecs."""
    if MISSING:
        pytest.skip(MISSING)
    server = JupyterLab(tmp_path_factory.mktemp("jupyterlab")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (sync API). Module-scoped:
    Playwright's sync API keeps an asyncio loop running on this thread until it
    exits, and later tests (``asyncio.run``) need none running."""
    if MISSING:
        pytest.skip(MISSING)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch_chromium(pw)
        try:
            yield b
        finally:
            b.close()
