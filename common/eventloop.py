"""How the services run their event loop: on uvloop (libuv), where it is installed.

uvloop runs the same asyncio code with a faster loop and transports; in notifyd's
throughput benchmark it took about a tenth off the CPU per reminder. Where it is not
installed (it is a dependency on every platform but Windows), asyncio's own loop runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion in a new event loop, as :func:`asyncio.run` does."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    return uvloop.run(main)
