"""Merge what ci/gpu-check wrote into one JSON document on stdout.

usage: python3 ci/summarize_gpu_check.py OUTDIR INFO_RC TESTS_RC BENCH_RC SKLEARN_RC
"""

from __future__ import annotations

import datetime
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def load(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"missing": f"{path.name}: {exc}"}


def test_counts(path: Path) -> dict[str, object]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"missing": f"{path.name}: {exc}"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts: dict[str, object] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["gpu_tests_run"] = sum(
        1 for case in suite.iter("testcase") if "cuda" in case.get("name", "") and case.find("skipped") is None
    )
    counts["failed"] = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return counts


def tests_named(path: Path, word: str) -> dict[str, str]:
    """Outcome of every test whose name holds ``word``: passed, failed, or skipped and why."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"missing": f"{path.name}: {exc}"}
    outcomes = {}
    for case in root.iter("testcase"):
        if word in case.get("name", ""):
            skipped = case.find("skipped")
            failed = case.find("failure") if case.find("failure") is not None else case.find("error")
            outcome = "passed"
            if skipped is not None:
                outcome = f"skipped: {skipped.get('message', '')}"
            elif failed is not None:
                outcome = f"failed: {failed.get('message', '')[:300]}"
            outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes


def main() -> None:
    out = Path(sys.argv[1])
    info_rc, tests_rc, bench_rc, sklearn_rc = (int(a) for a in sys.argv[2:6])
    info = load(out / "info.json")
    gpus = info.get("gpus", []) if isinstance(info, dict) else []
    summary = {
        "date": datetime.date.today().isoformat(),
        "gpu": gpus[0]["name"] if gpus else None,
        "exit_codes": {"info": info_rc, "tests": tests_rc, "bench": bench_rc, "sklearn": sklearn_rc},
        "info": info,
        "tests": test_counts(out / "tests.xml"),
        "bench": load(out / "bench.json"),
        "bench_w1": load(out / "bench-w1.json"),
        "bench_tf32": load(out / "bench-tf32.json"),
        "nccl": tests_named(out / "tests.xml", "nccl"),
        "sklearn_digits": load(out / "sklearn-digits.json"),
    }
    json.dump(summary, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
