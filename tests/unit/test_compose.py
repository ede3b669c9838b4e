"""compose.yaml's app services, run as compose would run them, without Docker (CI has no engine).

The services install the checkout at start. `pip install /src` built in the mounted checkout
itself: setuptools writes its egg-info and build/ into the source tree, which fails on the
read-only mount the file declared ("could not create 'llm_gateway.egg-info': Permission denied",
checked by hand as a user without write access), and on the writable mount the services used
instead it left root-owned files in the user's checkout, the gateway's and the consumer's builds
racing in one directory. Here the entrypoint and command of each service run under `sh` with
/src and /tmp/src moved into a temporary directory, `pip` and `llm-gateway` replaced by stand-ins:
pip checks that it was given a tree a build can use and writes into it as setuptools does; the
mounted tree must come out untouched, and a restart must work again."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("gateway", "consumer")

#: what a build of the package needs (pyproject names README.md as its readme, and the
#: migrations as package data)
NEEDED = (
    "pyproject.toml",
    "README.md",
    "gateway/__init__.py",
    "gateway/cli.py",
    "consumers/projector.py",
    "analytics/store.py",
)

FAKE_PIP = """#!/bin/sh
# pip install -q DIR, as a build would see DIR
[ "$1" = install ] && [ "$2" = -q ] && [ $# -eq 3 ] || {{ echo "pip: unexpected arguments: $*" >&2; exit 2; }}
dir="$3"
for f in {needed}; do [ -e "$dir/$f" ] || {{ echo "pip: $dir has no $f" >&2; exit 3; }}; done
ls "$dir"/analytics/migrations/*.sql >/dev/null 2>&1 || {{ echo "pip: no analytics migrations" >&2; exit 3; }}
ls "$dir"/consumers/migrations/postgres/*.sql >/dev/null 2>&1 || {{ echo "pip: no postgres migrations" >&2; exit 3; }}
mkdir -p "$dir/llm_gateway.egg-info" "$dir/build/lib" || exit 4   # what setuptools writes
echo "$dir" >> "{log}/pip"
"""

FAKE_CLI = """#!/bin/sh
echo "$*" >> "{log}/llm-gateway"
"""


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def unescaped(value: str) -> str:
    """Compose's interpolation of a string the file escaped throughout: ``$$`` is a ``$``."""
    assert "$" not in value.replace("$$", ""), f"interpolated by compose, not by the container: {value!r}"
    return value.replace("$$", "$")


def argv(value: str | list[str]) -> list[str]:
    if isinstance(value, str):  # compose splits a string command like a shell, without one
        import shlex

        return [unescaped(part) for part in shlex.split(value)]
    return [unescaped(part) for part in value]


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if "__pycache__" not in p.parts
    }


def moved(args: list[str], source: Path, build: Path) -> list[str]:
    return [a.replace("/tmp/src", str(build)).replace("/src", str(source)) for a in args]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The part of the checkout a build reads, read-only (root would write all the same: the
    test compares the tree before and after instead)."""
    source = tmp_path / "checkout"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("gateway", "consumers", "analytics"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for p in source.rglob("*"):
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return source


@pytest.mark.parametrize("service", APP_SERVICES)
def test_an_app_service_installs_from_a_copy_and_leaves_the_mounted_checkout_alone(
    service: str, checkout: Path, tmp_path: Path
) -> None:
    spec = compose()["services"][service]
    mounts = [v for v in spec["volumes"] if v.split(":")[1] == "/src"]
    assert mounts == [".:/src:ro"], f"{service}: the checkout is mounted read-only: {spec['volumes']}"

    log, bin_dir, build = tmp_path / "log", tmp_path / "bin", tmp_path / "build"
    log.mkdir()
    bin_dir.mkdir()
    for name, text in (("pip", FAKE_PIP), ("llm-gateway", FAKE_CLI)):
        script = bin_dir / name
        script.write_text(text.format(needed=" ".join(NEEDED), log=log), encoding="utf-8")
        script.chmod(0o755)
    before = tree(checkout)

    command = moved(argv(spec.get("entrypoint", [])) + argv(spec["command"]), checkout, build)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.update({k: str(v) for k, v in (spec.get("environment") or {}).items() if k == "LLM_GATEWAY_SIMULATE"})
    for start in (1, 2):  # restart: unless-stopped starts the same container again
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"start {start}: {done.stderr}"

    assert tree(checkout) == before, "the build wrote into the mounted checkout"
    assert (log / "pip").read_text().split() == [str(build)] * 2
    started = (log / "llm-gateway").read_text().splitlines()
    assert len(started) == 2 and started[0] == started[1]
    build_parser().parse_args(started[0].split())  # the CLI takes what compose gives it
    if service == "gateway":
        assert started[0] == "serve --host 0.0.0.0 --port 8080 --simulate"  # LLM_GATEWAY_SIMULATE=1 by default
    else:
        assert started[0].startswith("consume --group llm-usage-projector ")
