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


def _read(paths: list[Path]) -> tuple[list[ET.Element], list[tuple[str, str]]]:
    """The test suites of every JUnit file (one per pytest phase), and (file name, why) for
    each file that could not be read (a phase killed by its timeout writes none)."""
    suites: list[ET.Element] = []
    missing: list[tuple[str, str]] = []
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            missing.append((path.name, str(exc)))
            continue
        suites += [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return suites, missing


def _problem(case: ET.Element) -> ET.Element | None:
    """The <failure> or <error> of a test case, or None when it has neither."""
    failure = case.find("failure")
    return failure if failure is not None else case.find("error")


def test_counts(paths: list[Path]) -> dict[str, object]:
    """Tests, failures, errors, skipped and passed summed over the JUnit files (one per pytest
    phase), GPU tests run, the failed tests' ids, and each file that could not be read."""
    suites, missing = _read(paths)
    counts: dict[str, object] = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "gpu_tests_run": 0}
    failed: list[str] = []
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            if "cuda:" in case.get("name", "") and case.find("skipped") is None:  # a [cuda:0] test id
                counts["gpu_tests_run"] += 1
            if _problem(case) is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = failed
    if missing:
        counts["missing"] = [f"{name}: {why}" for name, why in missing]
    return counts


def tests_named(paths: list[Path], word: str) -> dict[str, str]:
    """Outcome of every test whose name holds ``word``: passed, failed, or skipped and why."""
    suites, missing = _read(paths)
    outcomes = {f"missing {name}": why for name, why in missing}
    for suite in suites:
        for case in suite.iter("testcase"):
            if word not in case.get("name", ""):
                continue
            skipped, failed = case.find("skipped"), _problem(case)
            outcome = "passed"
            if skipped is not None:
                outcome = f"skipped: {skipped.get('message', '')}"
            elif failed is not None:
                outcome = f"failed: {failed.get('message', '')[:300]}"
            outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes


def _row(bench: object, model: str, batch: int | None = None) -> dict | None:
    """The GPU row of ``model`` (at ``batch``) in a gpunn bench result, or None."""
    rows = bench.get("results", []) if isinstance(bench, dict) else []
    for row in rows:
        if row["device"] != "cpu" and row["model"] == model and (batch is None or row["batch"] == batch):
            return row
    return None


def targets(summary: dict) -> dict[str, object]:
    """The GPU targets of the fast-path issue, each as {"value", "target", "met"}."""
    checks: dict[str, object] = {}

    def check(name: str, row: dict | None, key: str, target: float, at_most: bool = False) -> None:
        value = None if row is None else row.get(key)
        if isinstance(value, dict):  # a framework's figures: its samples/s
            value = value.get("samples_per_s")
        met = None if value is None else (value <= target if at_most else value >= target)
        checks[name] = {"value": value, "target": f"{'<=' if at_most else '>='} {target}", "met": met}

    t1 = _row(summary["bench"], "T1", 128)
    w1 = _row(summary["bench_w1"], "W1")
    w1_tf32 = _row(summary["bench_tf32"], "W1")
    check("T1@128 gpunn / torch eager", t1, "gpunn_over_torch", 1.5)
    check("T1@128 graph replay / torch eager", t1, "graph_over_torch", 3.0)
    check("T1@128 launches per step (3 per Linear + 4)", t1, "launches_per_step", 10, at_most=True)
    check("W1 step / its matrix products", None if w1 is None else w1["gpunn"], "over_products", 1.10, at_most=True)
    check("W1 gpunn / torch eager (FP32)", w1, "gpunn_over_torch", 1.0)
    check("W1 gpunn / torch eager (TF32 both)", w1_tf32, "gpunn_over_torch", 1.0)
    return checks


def main() -> None:
    out = Path(sys.argv[1])
    info_rc, tests_rc, bench_rc, sklearn_rc = (int(a) for a in sys.argv[2:6])
    info = load(out / "info.json")
    # ci/gpu-check runs pytest in two phases (GPU tests first, then the rest), one file each
    junit = [out / "tests-gpu.xml", out / "tests-rest.xml"]
    gpus = info.get("gpus", []) if isinstance(info, dict) else []
    summary = {
        "date": datetime.date.today().isoformat(),
        "gpu": gpus[0]["name"] if gpus else None,
        "exit_codes": {"info": info_rc, "tests": tests_rc, "bench": bench_rc, "sklearn": sklearn_rc},
        "info": info,
        "tests": test_counts(junit),
        "bench": load(out / "bench.json"),
        "bench_w1": load(out / "bench-w1.json"),
        "bench_tf32": load(out / "bench-tf32.json"),
        "nccl": tests_named(junit, "nccl"),
        "graph_replay": tests_named(junit, "repla"),
        "sklearn_digits": load(out / "sklearn-digits.json"),
    }
    summary["targets"] = targets(summary)
    json.dump(summary, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
