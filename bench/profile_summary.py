"""Summarise py-spy ``--format raw`` (collapsed stacks) output, and draw it as a flame graph SVG.

``.venv/bin/python bench/profile_summary.py bench/out/profile-gql-submit-*.txt`` prints the same
tables bench/load.py puts in RESULTS.md.

Percentages are of *busy* samples: py-spy only samples threads that are running (idle threads,
e.g. the event loop waiting in epoll or an aiosqlite worker waiting on its queue, are skipped),
so on a one-core server they approximate the share of that core each frame used.
"""

from __future__ import annotations

import html
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

__all__ = ["parse_collapsed", "render_svg", "summarise_collapsed"]

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")

# Outer frames every stack shares (CLI start-up, the server's run loop, thread bootstrap): not
# interesting as "hotspots", so left out of the inclusive ranking (still counted in totals).
_BOILERPLATE = (
    "litestar:", "litestar/__main__.py", "rich_click/", "click/", "litestar/cli/", "uvicorn/",
    "asyncio/runners.py", "threading.py", "asyncio/base_events.py", "asyncio/events.py",
    "litestar/app.py", "litestar/middleware/", "litestar/_asgi/", "litestar/routes/",
)

# Where a sample's time is charged: walking from the leaf towards the root, the first frame that
# belongs to one of these (stdlib frames such as uuid.py, difflib.py or asyncio/ are charged to the
# library or app module that called them).
_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("piccolo/engine/", "Piccolo engine + aiosqlite (running SQL)"),
    ("aiosqlite/", "Piccolo engine + aiosqlite (running SQL)"),
    ("app/db/sqlite_pool.py", "Piccolo engine + aiosqlite (running SQL)"),
    ("piccolo/", "Piccolo query building (SQL strings, values, rows)"),
    ("graphql/", "graphql-core (parse/validate/execute)"),
    ("strawberry/", "Strawberry (schema, arguments, permissions, view)"),
    ("litestar/", "Litestar (routing, DI, parsing, responses)"),
    ("uvicorn/", "uvicorn + httptools (HTTP protocol)"),
    ("httptools/", "uvicorn + httptools (HTTP protocol)"),
    ("jwt/", "PyJWT (token verification)"),
    ("cryptography/", "PyJWT (token verification)"),
    ("structlog/", "structlog"),
    ("anyio/", "anyio"),
    ("scorers/", "scorers/ (rule scorers, difflib)"),
    ("plugins/", "plugins/"),
    ("msgspec/", "msgspec"),
)


def _component(body: list[str]) -> str:
    for frame in reversed(body):
        path = _file(frame)
        for prefix, name in _COMPONENTS:
            if path.startswith(prefix):
                return name
        if path.startswith("app/"):
            parts = path.split("/")
            return f"app/{parts[1]}" if len(parts) > 2 else path
    if body and body[-1].startswith("Runner.run "):
        return "event loop (uvloop C code: I/O, callbacks)"
    return "other (stdlib, start-up)"


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            stacks.append((m.group(1).split(";"), int(m.group(2))))
    return stacks


def _function(frame: str) -> str:
    """``name (path:line)`` -> ``name (path)``: one row per function, not per line."""
    m = _FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def _file(frame: str) -> str:
    m = _FRAME.match(frame)
    return m.group(2) if m else ""


def _package(frame: str) -> str:
    path = _file(frame)
    if not path:
        return frame.split(" ")[0]
    first = path.split("/")[0]
    if first == "app" and "/" in path:
        parts = path.split("/")
        return "/".join(parts[:2]) if len(parts) > 2 else "app"
    return first.removesuffix(".py") if "/" not in path else first


def _thread_kind(root: str) -> str:
    if "MainThread" in root:
        return "main thread (event loop)"
    if "_connection_worker_thread" in root:
        return "aiosqlite connection threads"
    return "other threads"


def summarise_collapsed(text: str, top: int = 30) -> dict[str, Any]:
    stacks = parse_collapsed(text)
    total = sum(c for _, c in stacks) or 1
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    components: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for frames, count in stacks:
        root, body = (frames[0], frames[1:]) if frames and frames[0].startswith("thread (") else ("", frames)
        threads[_thread_kind(root + (body[-1] if body else "") + ";".join(body[:6]))] += count
        seen = set()
        for frame in body:
            fn = _function(frame)
            if fn not in seen:
                seen.add(fn)
                inclusive[fn] += count
        if body:
            self_[_function(body[-1])] += count
            packages[_package(body[-1])] += count
            components[_component(body)] += count
    pct = lambda n: round(100.0 * n / total, 2)  # noqa: E731
    interesting = [(fn, n) for fn, n in inclusive.most_common()
                   if _file(fn) != "litestar" and not _file(fn).startswith(_BOILERPLATE)]
    return {
        "samples": total,
        "by_thread": [{"thread": k, "pct": pct(v)} for k, v in threads.most_common()],
        "top_inclusive": [{"frame": fn, "pct": pct(n), "self_pct": pct(self_[fn])} for fn, n in interesting[:top]],
        "top_self": [{"frame": fn, "pct": pct(n)} for fn, n in self_.most_common(top)],
        "by_package": [{"package": k, "pct": pct(v)} for k, v in packages.most_common(top)],
        "by_component": [{"component": k, "pct": pct(v)} for k, v in components.most_common(top)],
    }


def render_svg(text: str, title: str = "py-spy profile", width: int = 1400, min_pct: float = 0.1) -> str:
    """A plain icicle/flame graph (root at the top), hover a box for its name and share."""
    tree: dict[str, Any] = {"n": 0, "kids": defaultdict(dict)}

    def node(parent: dict[str, Any], name: str) -> dict[str, Any]:
        kid = parent["kids"].get(name)
        if kid is None:
            kid = {"n": 0, "kids": {}}
            parent["kids"][name] = kid
        return kid

    for frames, count in parse_collapsed(text):
        cur = tree
        cur["n"] += count
        for frame in frames:
            cur = node(cur, _function(frame))
            cur["n"] += count
    total = tree["n"] or 1
    row_h, top_pad = 17, 40
    rects: list[str] = []
    depth_max = 0

    def colour(name: str) -> str:
        path = _file(name)
        if path.startswith("app/"):
            return "#e8a33d"
        if path.startswith(("piccolo/", "aiosqlite/", "sqlite3/")):
            return "#6aa9e0"
        if path.startswith(("graphql/", "strawberry/")):
            return "#c678dd"
        if path.startswith(("litestar/", "uvicorn/", "httptools/")):
            return "#98c379"
        if path.startswith(("structlog/", "logging/")):
            return "#e06c75"
        h = sum(map(ord, name)) % 40
        return f"hsl({20 + h}, 60%, 75%)"

    def walk(n: dict[str, Any], name: str, x: float, depth: int) -> None:
        nonlocal depth_max
        w = width * n["n"] / total
        if name and 100.0 * n["n"] / total >= min_pct:
            depth_max = max(depth_max, depth)
            y = top_pad + depth * row_h
            label = html.escape(name)
            share = 100.0 * n["n"] / total
            chars = int(w / 7)
            text_ = html.escape(name[:chars - 2] + "…" if len(name) > chars else name) if chars > 3 else ""
            rects.append(
                f'<g><title>{label} — {share:.2f}% ({n["n"]} samples)</title>'
                f'<rect x="{x:.2f}" y="{y}" width="{max(w - 0.5, 0.1):.2f}" height="{row_h - 1}" '
                f'fill="{colour(name)}" rx="2"/>'
                f'<text x="{x + 3:.2f}" y="{y + row_h - 5}">{text_}</text></g>'
            )
        elif name:
            return
        cx = x
        for kid_name, kid in sorted(n["kids"].items(), key=lambda kv: -kv[1]["n"]):
            walk(kid, kid_name, cx, depth + (1 if name else 0))
            cx += width * kid["n"] / total

    walk(tree, "", 0.0, 0)
    height = top_pad + (depth_max + 2) * row_h
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">'
        f'<rect width="100%" height="100%" fill="#fafafa"/>'
        f'<text x="8" y="22" font-size="15">{html.escape(title)} — {total} samples (hover for details)</text>'
        + "".join(rects)
        + "</svg>"
    )


def _print(summary: dict[str, Any]) -> None:
    print(f"{summary['samples']} busy samples")
    print("\nby thread:")
    for row in summary["by_thread"]:
        print(f"  {row['pct']:6.2f}%  {row['thread']}")
    print("\ntop inclusive (function and everything it calls):")
    for row in summary["top_inclusive"]:
        print(f"  {row['pct']:6.2f}%  (self {row['self_pct']:5.2f}%)  {row['frame']}")
    print("\ntop self (leaf frame):")
    for row in summary["top_self"]:
        print(f"  {row['pct']:6.2f}%  {row['frame']}")
    print("\nby component (leaf charged to the first library/app frame above it):")
    for row in summary["by_component"]:
        print(f"  {row['pct']:6.2f}%  {row['component']}")
    print("\nby package of the leaf frame:")
    for row in summary["by_package"]:
        print(f"  {row['pct']:6.2f}%  {row['package']}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    for name in sys.argv[1:]:
        print(f"== {name}")
        _print(summarise_collapsed(Path(name).read_text()))
