"""Generates the protobuf/gRPC Python code and its mypy stubs from protos/ (build hook and `make proto`)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "protos"
STAMP = PROTO_ROOT / ".generated"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.joinpath("meterwire").rglob("*.proto"))


def sources_digest() -> str:
    """A digest of every .proto and of this generator, so stale generated code is detected."""
    digest = hashlib.sha256()
    for path in [*proto_files(), Path(__file__).resolve()]:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _plugin(name: str) -> str:
    """A mypy-protobuf plugin from the environment running this script (its bin is not always on PATH)."""
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install mypy-protobuf (pip install -e '.[dev]')")
    return found


def generate(force: bool = False) -> bool:
    """Regenerates when the sources changed since the last run; returns whether it did."""
    digest = sources_digest()
    if not force and STAMP.exists() and STAMP.read_text().strip() == digest:
        return False
    import grpc_tools  # imported late: only the generator needs it

    package_root = PROTO_ROOT / "meterwire"
    for old in [*package_root.rglob("*_pb2*.py"), *package_root.rglob("*.pyi")]:
        old.unlink()
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    if not files:
        raise RuntimeError(f"no .proto files under {package_root}")
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={PROTO_ROOT}",
        f"--grpc_python_out={PROTO_ROOT}",
        f"--mypy_out={PROTO_ROOT}",
        f"--mypy_grpc_out={PROTO_ROOT}",
        *files,
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)
    # Regular packages (not namespace packages) so mypy, pytest and the wheel all resolve them alike.
    for directory in [package_root, *(p for p in package_root.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            directory.joinpath("__init__.py").touch()
    STAMP.write_text(digest + "\n")
    return True


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # running as `python hatch_build.py` outside a build
    pass
else:

    class ProtoBuildHook(BuildHookInterface):  # type: ignore[type-arg]
        PLUGIN_NAME = "custom"

        def initialize(self, version: str, build_data: dict[str, Any]) -> None:
            generate()


if __name__ == "__main__":
    changed = generate(force="--force" in sys.argv)
    print("generated protobuf code" if changed else "protobuf code is up to date")
