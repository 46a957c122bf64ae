"""Helpers of the bad-input matrix: run a script in this process as its ``__main__`` would, and snapshot the
files of a folder to assert that a refused run touched none of them."""
from __future__ import annotations

import hashlib
import os
from types import ModuleType

import pytest

from utils.errors import run_cli


def run_script(script: ModuleType, argv: list[str], capsys) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of ``python <script>.py argv``, run in this process."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: script.main(script.get_args_parser().parse_args(argv)))
        raise SystemExit(0)
    err = capsys.readouterr().err
    return e.value.code, [line for line in err.splitlines() if line.strip()]


def snapshot(folder: str) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_refused(code: int, lines: list[str], match: str, before: dict | None = None, folder: str | None = None):
    """Exit 2, one ``error:`` line containing ``match``, and (given a snapshot) every file as it was."""
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert match in lines[0], (match, lines[0])
    if before is not None:
        after = snapshot(folder)
        assert {k: v for k, v in after.items() if k in before} == before, "a file that existed before changed"
