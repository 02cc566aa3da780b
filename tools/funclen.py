"""Function-length statistics over the project's code (tests and migrations left out).

Usage: python tools/funclen.py [ROOT]
Prints the count, median, p90 and max of function lengths in lines (def line to last
line of the body), and the ten longest. Used to compare layouts before and after a
restructure.
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path

SKIP_PARTS = {"tests", "migrations", ".venv", "bench", "node_modules", "var"}


def project_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_PARTS & set(rel.parts) or rel.name.startswith("test_"):
            continue
        if rel.name == "conftest.py":
            continue
        yield rel, path


def function_lengths(root: Path):
    for rel, path in project_files(root):
        tree = ast.parse(path.read_text(), filename=str(rel))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield (
                    f"{rel}:{node.lineno} {node.name}",
                    node.end_lineno - node.lineno + 1,
                )


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    rows = sorted(function_lengths(root), key=lambda row: row[1])
    lengths = [length for _, length in rows]
    p90 = statistics.quantiles(lengths, n=10)[-1]
    print(
        f"functions={len(lengths)} median={statistics.median(lengths)} "
        f"p90={p90:.0f} max={lengths[-1]}"
    )
    for name, length in reversed(rows[-10:]):
        print(f"  {length:4d} {name}")


if __name__ == "__main__":
    main()
