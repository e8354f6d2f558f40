"""Running the real commands (alarmd, notifyd, alarmctl) as processes in tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # the virtualenv's bin: the installed commands


def base_env(**settings: str) -> dict[str, str]:
    """This environment without CALALARM_* variables, plus ``CALALARM_<NAME>`` for each setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALALARM_")}
    env.update({f"CALALARM_{name.upper()}": value for name, value in settings.items()})
    return env


def spawn(command: str, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log``."""
    return subprocess.Popen([str(BIN / command), *args], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def wait_for_log(log: Path, text: str, timeout: float) -> None:  # noqa: ASYNC109 - a test helper
    """Wait until ``text`` appears in ``log``; fail with the log's content."""
    deadline = time.monotonic() + timeout
    while text not in read_log(log):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {log.name} within {timeout}s:\n{read_log(log)[-3000:]}")
        await asyncio.sleep(0.1)


def read_log(log: Path) -> str:
    """The log's text so far ("" before the process wrote any)."""
    try:
        return log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def terminate(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:  # noqa: ASYNC109
    """SIGTERM, then the exit status (SIGKILL if it does not exit within ``timeout``)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait, 10)
        raise AssertionError(f"{process.args!r} did not exit within {timeout}s of SIGTERM") from None
