"""What a process started, read from /proc (Linux): to check that stopping it left nothing behind."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2])


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(pid: int) -> dict[int, int]:
    """{pid: process group} of every live descendant of pid."""
    stats = {p: s for p in _pids() if (s := _stat(p))}
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (_, ppid, pgid) in stats.items():
            if ppid == parent and child not in found:
                found[child] = pgid
                frontier.append(child)
    return found


def alive(pids: set[int], groups: set[int]) -> list[str]:
    """The processes, of these pids or process groups, still running (zombies count as gone)."""
    left = []
    for pid in _pids():
        stat = _stat(pid)
        if stat and stat[0] != "Z" and (pid in pids or stat[2] in groups):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            left.append(f"{pid}: {cmdline[:200]}")
    return left
