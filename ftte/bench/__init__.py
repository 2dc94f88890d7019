"""Benchmarks: each prints ratios measured side by side in one run and writes JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def publish(results: dict[str, Any], table: str, path: Path) -> None:
    """Record the command that produced ``results``, print ``table``, write the JSON."""
    results["command"] = " ".join(["ftte", *sys.argv[1:]])
    print(table)
    path.write_text(json.dumps(results, indent=1))
