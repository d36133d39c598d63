"""Print pip constraints pinning each direct dependency to its declared floor.

``aiohttp>=3.14,<4`` in pyproject.toml becomes ``aiohttp==3.14``: what
scripts/test-floors installs to show the floors are true. Dependencies without a
``>=`` floor, or whose environment marker excludes this machine, are left free.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

FLOOR = re.compile(r">=\s*([0-9][^,;\s]*)")
NAME = re.compile(r"^\s*([A-Za-z0-9_.-]+)")


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    out = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if "win32" in marker and "!=" not in marker:
            continue
        name, floor = NAME.match(spec), FLOOR.search(spec)
        if name and floor:
            out.append(f"{name.group(1)}=={floor.group(1)}")
    return out


if __name__ == "__main__":
    sys.stdout.write("\n".join(floors(Path(__file__).parent.parent / "pyproject.toml")) + "\n")
