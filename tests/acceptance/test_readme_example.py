"""The README's "From calendar code" example runs as it is, after `alarmctl db upgrade`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.processes import BIN, base_env

README = Path(__file__).parents[2] / "README.md"


def calendar_code_example() -> str:
    section = README.read_text(encoding="utf-8").split("## From calendar code\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return str(block)


def test_the_calendar_code_example_runs_against_a_migrated_database(tmp_path: Path) -> None:
    env = base_env()
    upgrade = subprocess.run(
        [str(BIN / "alarmctl"), "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert upgrade.returncode == 0, upgrade.stderr
    run = subprocess.run(
        [sys.executable, "-c", calendar_code_example()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["1 []", "1", "1", "1"]
