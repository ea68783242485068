"""Processes seen through /proc (Linux): who is whose child, and who still runs."""

from __future__ import annotations

from pathlib import Path


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent from /proc, or None once it is gone."""
    try:
        # "pid (name) state ppid ...": the name may hold spaces, so split after its closing parenthesis.
        state, parent = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:2]
    except OSError:
        return None
    return state, int(parent)


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has)."""
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, exited ones included."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (found := _state_and_parent(int(entry.name))) is not None and found[1] == pid
    ]


def command_line(pid: int) -> bytes:
    """The process's NUL-separated arguments (b"" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
