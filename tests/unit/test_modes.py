"""Each process pays only for what its mode does (issue 10 §3, issue 14 item 2).

`aiconv web` and `aiconv worker` must never load llama.cpp: it is most of a process's memory
when loaded. Checked in a fresh interpreter per mode, as the CLI starts one: import the CLI,
resolve the mode as `aiconv MODE` does, then look at what is loaded. `ml` is the control: the
same check must see llama.cpp there, or it proves nothing.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import aiconv

HEAVY = ("llama_cpp", "aiconv.ml.engine", "aiconv.ml.llama")
PROBE = """
import json, sys
import aiconv.cli
from aiconv.modes import resolve
resolve(sys.argv[1])
print(json.dumps(sorted(name for name in sys.modules if name in sys.argv[2:])))
"""


def loaded_after_resolving(mode: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, *HEAVY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout)
    return loaded


@pytest.mark.parametrize("mode", ["web", "worker", "migrate"])
def test_web_and_worker_never_import_llama_cpp(mode: str) -> None:
    assert loaded_after_resolving(mode) == []


def test_the_ml_mode_does_import_it_so_the_check_sees_it() -> None:
    assert loaded_after_resolving("ml") == sorted(HEAVY)


def test_importing_the_cli_or_the_modes_package_imports_no_mode() -> None:
    probe = "import sys, aiconv.cli, aiconv.modes; print(sorted(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    modes = [name for name in ast.literal_eval(done.stdout) if name.startswith("aiconv.modes.")]
    assert modes == []


def test_an_unknown_mode_is_a_clear_error() -> None:
    from aiconv.modes import resolve

    with pytest.raises(ValueError, match="unknown mode 'webb'"):
        resolve("webb")


def test_no_module_imports_a_private_name_of_another() -> None:
    """A leading underscore says "not part of this module's interface": an import of one from
    elsewhere is a hidden dependency, broken by the next rename (`_retrying`, issue 14)."""
    package = Path(aiconv.__file__).parent
    offenders = []
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("aiconv"):
                continue
            offenders += [
                f"{source.relative_to(package)}: {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    assert offenders == []
