"""ci/gpu-check's helper: the preflight, and the merge of what the check wrote into one JSON document.

usage:
    python3 ci/summarize_gpu_check.py preflight OUTDIR [COMPUTE_SANITIZER]
        one line per module the check uses (and compute-sanitizer, found by ci/gpu-check);
        writes OUTDIR/preflight.json; exit 1 when one that gpunn or its tests need is missing
    python3 ci/summarize_gpu_check.py OUTDIR [--deadline S] [--elapsed S] [--sanitize-selection ARGS]
        the summary on stdout and its verdict on stderr; exit 0 when the check passed, 3 when
        it did not (any other status: the summary itself failed)

Standard library only, so that it still reports when the preflight finds numpy missing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

# ----------------------------------------------------------------------------- preflight

# What each module is for: without a required one gpunn or its tests cannot run at all; without
# an optional one the steps that use it are skipped or noted (the tests skip themselves).
REQUIRED = {
    "numpy": "gpunn itself",
    "cupy": "the GPU path",
    "pytest": "the tests",
    "safetensors": "checkpoints (imported by gpunn)",
    "tqdm": "progress bars (a gpunn dependency)",
    "threadpoolctl": "`gpunn info` and the BLAS thread limits (a gpunn dependency)",
}
OPTIONAL = {
    "torch": "the PyTorch baselines of the benches",
    "sklearn": "the scikit-learn comparison and gpunn.sklearn's tests",
    "numba": "the compiled CPU loops (the `fast` extra) and their tests",
    "mpi4py": "the MPI data-parallel tests",
    "matplotlib": "the bench plots and the plot tests",
}


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:300]


def _sanitizer_version(path: str) -> str | None:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({_first_line(exc)})"
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "version" in line.lower()), lines[-1] if lines else None)


def preflight(out: Path, sanitizer: str) -> int:
    """Import every module the check uses, one line each; write OUTDIR/preflight.json."""
    report: dict[str, object] = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}}
    print(f"preflight: python3 {report['python']} ({sys.executable})", flush=True)
    missing_required, missing_optional = [], []
    for name, role in {**REQUIRED, **OPTIONAL}.items():
        required = name in REQUIRED
        start = time.perf_counter()
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a broken install counts as missing, whatever it raises
            why = _first_line(exc)
            report["modules"][name] = {"missing": why, "required": required, "for": role}
            (missing_required if required else missing_optional).append(name)
            kind = "MISSING, required" if required else "missing, optional"
            print(f"preflight: {name:<17} {kind} ({role}): {why}", flush=True)
            continue
        seconds = round(time.perf_counter() - start, 2)
        version = str(getattr(module, "__version__", "?"))
        report["modules"][name] = {"version": version, "required": required, "import_s": seconds}
        print(f"preflight: {name:<17} {version} ({seconds} s to import)", flush=True)
    if sanitizer:
        version = _sanitizer_version(sanitizer)
        report["compute_sanitizer"] = {"path": sanitizer, "version": version}
        print(f"preflight: {'compute-sanitizer':<17} {sanitizer} ({version})", flush=True)
    else:
        report["compute_sanitizer"] = None
        missing_optional.append("compute-sanitizer")
        print(
            f"preflight: {'compute-sanitizer':<17} absent (not on PATH nor under /usr/local/cuda*): "
            "the sanitizer step is skipped",
            flush=True,
        )
    report["missing_required"] = missing_required
    report["missing_optional"] = missing_optional
    report["ok"] = not missing_required
    (out / "preflight.json").write_text(json.dumps(report, indent=2) + "\n")
    if missing_required:
        print(
            f"preflight: FAILED: {', '.join(missing_required)} missing; gpunn's tests cannot run, the check stops here",
            flush=True,
        )
        return 1
    return 0


# ----------------------------------------------------------------------------- the results


def load(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"missing": f"{path.name}: {exc}"}


def _read(paths: list[Path]) -> tuple[list[ET.Element], list[tuple[str, str]]]:
    """The test suites of every JUnit file (one per pytest phase), and (file name, why) for
    each file that could not be read (a phase killed outright, or never started, writes none)."""
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


def _collection_failed(path: Path) -> bool:
    """Whether a JUnit file records a collection error (pytest's exit 2 without an interrupt)."""
    suites, _ = _read([path])
    return any(
        problem is not None and problem.get("message") == "collection failure"
        for suite in suites
        for case in suite.iter("testcase")
        for problem in [_problem(case)]
    )


# ----------------------------------------------------------------------------- the steps

# Exit statuses: `timeout` returns 124 when it sent its signal (SIGINT to pytest, SIGTERM to the
# others) and the command then ended, 137 when the command outlived the grace period and was
# killed; pytest returns 1 for failed tests, 2 when interrupted (or when collection failed), 5
# when no test was selected; ci/gpu-check runs compute-sanitizer with --error-exitcode 86.
SANITIZER_ERRORS = 86
PYTEST_STEPS = ("tests-gpu", "tests-rest", "memcheck", "racecheck")


def read_steps(path: Path) -> dict[str, dict[str, object]]:
    """ci/gpu-check's steps.tsv: name, exit code, limit (s), seconds taken, and a note for a
    step that did not run."""
    steps: dict[str, dict[str, object]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return steps
    for line in lines:
        name, rc, limit, seconds, note = (line.split("\t") + [""] * 5)[:5]
        if not name:
            continue
        steps[name] = {
            "exit_code": int(rc) if rc.lstrip("-").isdigit() else None,
            "limit_s": int(limit) if limit.lstrip("-").isdigit() else None,
            "seconds": int(seconds) if seconds.isdigit() else None,
        }
        if note:
            steps[name]["note"] = note
    return steps


STATUS = {0: "ok", 124: "cut short at its time limit", 137: "cut short: killed after the grace period"}
PYTEST_STATUS = {
    1: "tests failed",
    5: "no test selected (pytest exit 5)",
    124: "cut short at its time limit (SIGINT: the tests that ran are counted)",
}


def step_status(name: str, step: dict[str, object] | None, junit: Path | None = None) -> str:
    """One phrase for how a step ended."""
    if step is None or step["exit_code"] is None:
        return "not run" if step is None else str(step.get("note", "not run"))
    rc = step["exit_code"]
    phrase = STATUS.get(rc)
    if name in PYTEST_STEPS:
        phrase = PYTEST_STATUS.get(rc, phrase)
        if name in ("memcheck", "racecheck") and rc == SANITIZER_ERRORS:
            phrase = "the sanitizer reported errors"
        if rc == 2:
            collection = junit is not None and _collection_failed(junit)
            phrase = "collection errors (pytest exit 2)" if collection else "cut short: interrupted (pytest exit 2)"
    return phrase or f"failed (exit {rc})"


def _cut(status: str) -> bool:
    return status.startswith("cut short")


def test_phase(path: Path, name: str, step: dict[str, object] | None) -> dict[str, object]:
    """A pytest phase: how it ended and what ran (a phase cut short still counts its tests)."""
    status = step_status(name, step, path)
    if step is None or step["exit_code"] is None:
        return {"status": status}
    counts = test_counts([path])
    return {"status": status, "cut_short": _cut(status), "exit_code": step["exit_code"], **counts}


def sanitizer_report(out: Path, tool: str, step: dict[str, object] | None) -> dict[str, object]:
    """One compute-sanitizer run: its status, the errors it counted ("ERROR SUMMARY: N errors",
    or racecheck's "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)"), the first
    error lines, and the tests that ran under it."""
    junit = out / f"sanitizer-{tool}.xml"
    status = step_status(tool, step, junit)
    report: dict[str, object] = {"status": status}
    if step is None or step["exit_code"] is None:
        return report
    try:
        text = (out / f"sanitizer-{tool}.txt").read_text(errors="replace")
    except OSError as exc:
        text = ""
        report["log"] = f"unreadable: {exc}"
    summaries = re.findall(r"ERROR SUMMARY: (\d+) errors?", text)
    race = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    errors: int | None = int(summaries[-1]) if summaries else None
    if race:
        hazards, race_errors, warnings = (int(n) for n in race[-1])
        report["hazards"] = {"displayed": hazards, "errors": race_errors, "warnings": warnings}
        errors = race_errors if errors is None else max(errors, race_errors)
    report["errors"] = errors  # None: no summary line (the sanitizer did not finish, or did not start)
    first = [
        line.strip(" =")
        for line in text.splitlines()
        if line.startswith("=====")
        and "SUMMARY" not in line
        and re.search(r"Invalid|Error|error|Race|hazard|Warning", line)
    ]
    if first:
        report["first_errors"] = first[:10]
    counts = test_counts([junit])
    report.update(exit_code=step["exit_code"], cut_short=_cut(status), limit_s=step["limit_s"], seconds=step["seconds"])
    report["tests"] = {key: counts[key] for key in ("tests", "passed", "failures", "errors", "skipped", "failed")}
    if "missing" in counts:
        report["tests"]["missing"] = counts["missing"]
        report["log_tail"] = [line for line in text.splitlines() if line.strip()][-8:]
    return report


def _gpu_rows(bench: object) -> list[dict]:
    """The GPU rows of a gpunn bench result (none for a missing one)."""
    rows = bench.get("results", []) if isinstance(bench, dict) else []
    return [row for row in rows if row["device"] != "cpu"]


def _row(bench: object, model: str, batch: int | None = None) -> dict | None:
    """The GPU row of ``model`` (at ``batch``) in a gpunn bench result, or None."""
    rows = _gpu_rows(bench)
    return next((r for r in rows if r["model"] == model and (batch is None or r["batch"] == batch)), None)


def crossover(*benches: object) -> dict[str, int | None]:
    """Per model, the smallest batch measured on both at which the GPU's gpunn beats the CPU's
    (gpunn.bench.run.crossover, over the GPU run and the CPU run together)."""
    rows = [row for bench in benches if isinstance(bench, dict) for row in bench.get("results", [])]
    result: dict[str, int | None] = {}
    for model in sorted({r["model"] for r in rows}):
        cpu = {r["batch"]: r["gpunn"]["samples_per_s"] for r in rows if r["model"] == model and r["device"] == "cpu"}
        gpu = {r["batch"]: r["gpunn"]["samples_per_s"] for r in rows if r["model"] == model and r["device"] != "cpu"}
        common = sorted(set(cpu) & set(gpu))
        if common:
            result[model] = next((b for b in common if gpu[b] > cpu[b]), None)
    return result


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


# Each GPU speed mechanism and the bench ratio that measures it, paired in one interleaved run:
# the eager step on the reference Ops over the same step on the fused kernels, and the eager step
# over its CUDA-graph replay (which needs gpunn's own cuBLAS handle to capture the products).
MECHANISMS = {
    "fused CUDA kernels (CupyOps over the reference Ops on CuPy)": "gpunn_over_reference",
    "CUDA-graph replay and its cuBLAS handle (over the eager step)": "graph_over_gpunn",
}
EARNS_ITS_PLACE = 1.10  # design.md: a speed mechanism stays where it gains at least 10 % on a named workload


def mechanisms(summary: dict) -> dict[str, object]:
    """Per GPU speed mechanism: its gain on every GPU workload measured ("T1@128": ×), the best,
    and whether that earns the mechanism its place (None: not measured)."""
    rows = [row for key in ("bench", "bench_w1") for row in _gpu_rows(summary[key])]
    result: dict[str, object] = {}
    for name, key in MECHANISMS.items():
        gains = {f"{row['model']}@{row['batch']}": row[key] for row in rows if row.get(key) is not None}
        best = max(gains, key=gains.__getitem__) if gains else None
        earns = None if best is None else gains[best] >= EARNS_ITS_PLACE
        result[name] = {"gains": gains, "best": best, "earns_its_place": earns}
    return result


def _mechanism_notes(found: dict[str, object]) -> list[str]:
    notes = []
    for name, m in found.items():
        if m["best"] is None:
            notes.append(f"speed mechanism {name}: not measured")
            continue
        gain = f"{m['gains'][m['best']]:.2f}x on {m['best']}"
        notes.append(
            f"speed mechanism {name}: {gain}, earns its place"
            if m["earns_its_place"]
            else f"speed mechanism {name}: at most {gain}, under the 10 % bar on every GPU workload measured"
        )
    return notes


# ----------------------------------------------------------------------------- the verdict

GPU_STEPS = ("tests-gpu", "bench", "bench-w1", "bench-tf32")  # cut short: their evidence is incomplete


def _preflight_verdict(pre: object, problems: list[str], notes: list[str]) -> None:
    if not isinstance(pre, dict) or "missing" in pre:
        problems.append("preflight: no result")
        return
    if pre.get("missing_required"):
        problems.append(f"preflight: missing {', '.join(pre['missing_required'])}")
    if pre.get("missing_optional"):
        notes.append(f"preflight: optional ones missing: {', '.join(pre['missing_optional'])}")


def _sanitizer_verdict(tool: str, report: dict, problems: list[str], notes: list[str]) -> None:
    status = report.get("status", "not run")
    if report.get("errors"):
        problems.append(f"{tool}: {report['errors']} errors reported by compute-sanitizer")
    elif "exit_code" not in report:
        notes.append(f"{tool}: {status}")
    elif status.startswith("cut short"):
        notes.append(f"{tool}: {status}; {report['tests']['passed']} tests passed under it before")
    elif status != "ok":
        problems.append(f"{tool}: {status}")
    elif report["tests"]["passed"] == 0:
        problems.append(f"{tool}: no test ran under the sanitizer ({report['tests']['skipped']} skipped)")


def verdict(summary: dict) -> tuple[list[str], list[str]]:
    """(problems, notes): a problem fails the check; a note is a step cut short or skipped
    where that leaves the check's evidence whole (the CPU-side steps, a bounded sanitizer run,
    an optional module missing). A GPU step that did not start on a machine with a GPU is a
    problem: the GPU evidence it was to give is missing."""
    problems: list[str] = []
    notes: list[str] = []
    _preflight_verdict(summary["preflight"], problems, notes)
    if not summary["gpu"] and "info" in summary["steps"]:  # (a failed preflight stops before it)
        info = summary["info"] if isinstance(summary["info"], dict) else {}
        why = info.get("why_cpu") or info.get("device_error") or info.get("missing") or "gpunn info found none"
        problems.append(f"no GPU: {why}")
    for name, step in summary["steps"].items():
        status = step["status"]
        if status in ("ok", "tests failed") or name in ("memcheck", "racecheck"):
            continue  # failed tests are counted below, the sanitizer runs after them
        cut = status.startswith("cut short")
        ran = summary["tests"].get(name.removeprefix("tests-"), {}).get("tests") if cut else None
        text = f"{name}: {status}" + (f"; {ran} tests ran before" if ran is not None else "")
        if step.get("exit_code") is None:  # not started: its evidence is missing if a GPU was there to give it
            evidence_lost = name in GPU_STEPS and bool(summary["gpu"])
        else:
            evidence_lost = not cut or name in GPU_STEPS
        (problems if evidence_lost else notes).append(text)
    for phase in ("gpu", "rest"):
        counts = summary["tests"][phase]
        if counts.get("failures") or counts.get("errors"):
            problems.append(f"tests-{phase}: {counts['failures']} failed, {counts['errors']} errors")
    for tool in ("memcheck", "racecheck"):
        _sanitizer_verdict(tool, summary["sanitizer"].get(tool, {}), problems, notes)
    if summary["gpu"]:
        notes += _mechanism_notes(summary["mechanisms"])
    return problems, notes


def summarize(out: Path, args: argparse.Namespace) -> dict:
    info = load(out / "info.json")
    preflight_result = load(out / "preflight.json")
    steps = read_steps(out / "steps.tsv")
    gpu_xml, rest_xml = out / "tests-gpu.xml", out / "tests-rest.xml"
    junit = [gpu_xml, rest_xml]
    gpus = info.get("gpus", []) if isinstance(info, dict) else []
    devices = info.get("devices", []) if isinstance(info, dict) else []
    sanitizer_path = preflight_result.get("compute_sanitizer") if isinstance(preflight_result, dict) else None
    for name, step in steps.items():
        step["status"] = step_status(name, step, {"tests-gpu": gpu_xml, "tests-rest": rest_xml}.get(name))
    bench, bench_cpu = load(out / "bench.json"), load(out / "bench-cpu.json")
    summary = {
        "date": datetime.date.today().isoformat(),
        "gpu": gpus[0]["name"] if gpus else None,
        "gpu_device": next((d for d in devices if str(d).startswith("cuda")), None),
        "ok": None,
        "problems": [],
        "notes": [],
        "deadline_s": args.deadline,
        "elapsed_s": args.elapsed,  # when the summary started; it takes about a second more
        "preflight": preflight_result,
        "steps": steps,
        "info": info,
        "tests": {
            "gpu": test_phase(gpu_xml, "tests-gpu", steps.get("tests-gpu")),
            "rest": test_phase(rest_xml, "tests-rest", steps.get("tests-rest")),
            "all": test_counts(junit),
        },
        "sanitizer": {
            "compute_sanitizer": sanitizer_path,
            "selection": args.sanitize_selection,
            "memcheck": sanitizer_report(out, "memcheck", steps.get("memcheck")),
            "racecheck": sanitizer_report(out, "racecheck", steps.get("racecheck")),
        },
        "bench": bench,
        "bench_w1": load(out / "bench-w1.json"),
        "bench_tf32": load(out / "bench-tf32.json"),
        "bench_cpu": bench_cpu,
        "crossover": crossover(bench, bench_cpu),
        "nccl": tests_named(junit, "nccl"),
        "graph_replay": tests_named(junit, "repla"),
        "sklearn_digits": load(out / "sklearn-digits.json"),
    }
    summary["targets"] = targets(summary)
    summary["mechanisms"] = mechanisms(summary)
    summary["problems"], summary["notes"] = verdict(summary)
    summary["ok"] = not summary["problems"]
    return summary


def main(argv: list[str]) -> int:
    if argv[:1] == ["preflight"]:
        if len(argv) not in (2, 3):
            sys.exit(__doc__)
        return preflight(Path(argv[1]), argv[2] if len(argv) == 3 else "")
    parser = argparse.ArgumentParser(description="merge what ci/gpu-check wrote into one JSON document")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--deadline", type=int, default=None, help="the check's deadline (s)")
    parser.add_argument("--elapsed", type=int, default=None, help="seconds the check took before its summary")
    parser.add_argument("--sanitize-selection", default=None, help="the pytest arguments of the sanitizer runs")
    args = parser.parse_args(argv)
    summary = summarize(args.outdir, args)
    json.dump(summary, sys.stdout, indent=2)
    print()
    lines = [f"  problem: {p}" for p in summary["problems"]] + [f"  note: {n}" for n in summary["notes"]]
    print(f"summary: {'ok' if summary['ok'] else 'NOT ok'}", *lines, sep="\n", file=sys.stderr)
    return 0 if summary["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
