"""`cluster.sh` gives each component of a plane its own port.

Ports are picked at random and checked free before any component starts, so two picks can land on one port; the
second component then fails to bind it (CI once gave etcd's peer port and kwok's port the same number). These run
the script's own port functions in bash, over a range just wide enough for every component.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CLUSTER_SH = Path(__file__).resolve().parents[1] / "tools" / "k8s" / "cluster.sh"


def _ports_script(state: Path, lo: int, count: int) -> str:
    lines = CLUSTER_SH.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("port_free()"))
    end = next(i for i, line in enumerate(lines) if line.startswith("load_ports()"))
    functions = "\n".join(lines[start:end + 1])
    return f"""set -euo pipefail
die() {{ echo "$*" >&2; exit 1; }}
state={state}
{functions}
port_range() {{ echo "{lo} {lo + count - 1}"; }}
ensure_ports
cat "$state/ports.env"
"""


def _ports(state: Path, lo: int, count: int) -> dict[str, int]:
    out = subprocess.run(["bash", "-c", _ports_script(state, lo, count)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return {name: int(port) for name, port in (line.split("=") for line in out.split())}


def test_every_component_gets_a_port_of_its_own_even_when_the_range_barely_fits(tmp_path: Path) -> None:
    ports = _ports(tmp_path, 23100, 12)
    assert len(ports) == 12
    assert sorted(ports.values()) == list(range(23100, 23112))


def test_a_ports_file_that_gives_one_port_twice_is_picked_again(tmp_path: Path) -> None:
    first = _ports(tmp_path, 23100, 400)
    names = list(first)
    first[names[1]] = first[names[5]]
    (tmp_path / "ports.env").write_text("".join(f"{name}={port}\n" for name, port in first.items()))
    again = _ports(tmp_path, 23100, 400)
    assert len(set(again.values())) == len(again)


def test_a_ports_file_without_duplicates_is_kept(tmp_path: Path) -> None:
    assert _ports(tmp_path, 23100, 400) == _ports(tmp_path, 23100, 400)
