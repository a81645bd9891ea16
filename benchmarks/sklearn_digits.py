"""gpunn.sklearn.MLPClassifier against scikit-learn's MLPClassifier on the digits, in one run.

The issue's comparison: digits split 75/25 with random_state=0, hidden_layer_sizes=(100,),
everything else at its default (random_state=0 for both estimators, so both start from the same
initial weights and see the same batch order). Fits alternate — scikit-learn, gpunn,
scikit-learn, gpunn, … — so that a busy machine slows both alike; the medians, their ratio and
both test accuracies are printed and written as JSON with the machine's description.

    python benchmarks/sklearn_digits.py --repeat 21 --json benchmarks/results/sklearn-digits-cpu-DATE.json
    python benchmarks/sklearn_digits.py --device cuda:0 --json OUT/sklearn-digits.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import gpunn as gn
from gpunn.backend.selection import ops_for
from gpunn.bench.timing import paired_ratio
from gpunn.cli.sysinfo import system_info

try:
    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as SklearnMLP

    from gpunn.sklearn import MLPClassifier as GpunnMLP
except ImportError as exc:  # e.g. ci/gpu-check's python3, which has no scikit-learn
    MISSING: str | None = f'scikit-learn is not installed ({exc}); pip install "gpunn[sklearn]"'
else:
    MISSING = None


class _OneThread:
    """An estimator whose fit runs with the BLAS limited to one thread."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, x: Any, y: Any) -> _OneThread:
        with threadpool_limits(limits=1, user_api="blas"):
            self.estimator.fit(x, y)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.estimator, name)


def timed_fit(make: Any, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Fit a fresh estimator, timing the fit alone; score it on the test part afterwards."""
    model = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(x_train, y_train)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "accuracy": float(model.score(x_test, y_test)),
        "n_iter": int(model.n_iter_),
        "final_loss": float(model.loss_curve_[-1]),
        "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed fits of each library (default 5, at least 3)")
    parser.add_argument("--device", default="auto", help="gpunn's device: auto, cpu or cuda:N (default auto)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.repeat < 3:
        parser.error("--repeat must be at least 3")
    if MISSING is not None:  # say so, in the results too, rather than fail a larger check
        print(f"skipped: {MISSING}")
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"benchmark": "sklearn_digits", "skipped": MISSING}, indent=2) + "\n")
        return 0

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    device = gn.device(None if args.device == "auto" else args.device)
    gpunn_device = str(device)
    makers = {
        "sklearn": lambda: SklearnMLP(hidden_layer_sizes=(100,), random_state=0),
        "gpunn": lambda: GpunnMLP(hidden_layer_sizes=(100,), random_state=0, device=args.device),
        # A reference, not the comparison: scikit-learn with its BLAS held to one thread, as
        # gpunn holds it for layers this small (see gpunn.sklearn.network._blas_threads).
        "sklearn_blas_1_thread": lambda: _OneThread(SklearnMLP(hidden_layer_sizes=(100,), random_state=0)),
    }
    data = (x_train, y_train, x_test, y_test)
    for make in makers.values():  # warm-up: imports, device probe, Numba and GPU kernels compiled
        timed_fit(make, *data)
    runs: dict[str, list[dict]] = {name: [] for name in makers}
    for i in range(args.repeat):
        for name, make in makers.items():
            run = timed_fit(make, *data)
            runs[name].append(run)
            print(
                f"[{i + 1}/{args.repeat}] {name:21s} fit {run['seconds']:.3f} s, {run['n_iter']} iterations, "
                f"test accuracy {run['accuracy']:.4f}",
                flush=True,
            )

    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        summary[name] = {
            "fit_seconds_median": statistics.median(r["seconds"] for r in rs),
            "fit_seconds": [r["seconds"] for r in rs],
            "accuracy_median": statistics.median(r["accuracy"] for r in rs),
            "accuracies": [r["accuracy"] for r in rs],
            "n_iter": [r["n_iter"] for r in rs],
            "final_loss": [r["final_loss"] for r in rs],
            "converged": [r["converged"] for r in rs],
        }
    speedup = summary["sklearn"]["fit_seconds_median"] / summary["gpunn"]["fit_seconds_median"]
    # the same ratio taken inside each round (fits seconds apart), as gpunn bench pairs its
    # windows: drift on a shared machine cancels pair by pair, not only in the long run
    paired, paired_p10, paired_p90 = paired_ratio(summary["sklearn"]["fit_seconds"], summary["gpunn"]["fit_seconds"])
    speedup_1_thread = summary["sklearn_blas_1_thread"]["fit_seconds_median"] / summary["gpunn"]["fit_seconds_median"]
    accuracy_gap = summary["gpunn"]["accuracy_median"] - summary["sklearn"]["accuracy_median"]
    result = {
        "benchmark": "sklearn_digits",
        "task": "digits, train_test_split(test_size=0.25, random_state=0); MLPClassifier(hidden_layer_sizes=(100,), "
        "random_state=0), other parameters at their defaults",
        "n_train": int(x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
        "repeat": args.repeat,
        "gpunn_device": gpunn_device,
        "gpunn_ops": type(ops_for(device)).__name__,  # the primitives gpunn's layers and optimizer ran
        "sklearn_version": sklearn.__version__,
        "results": summary,
        "speedup": speedup,
        "speedup_paired": paired,
        "speedup_paired_p10_p90": [paired_p10, paired_p90],
        "speedup_vs_sklearn_blas_1_thread": speedup_1_thread,
        "accuracy_gap_points": 100.0 * accuracy_gap,
        "meets_speedup_3x": speedup >= 3.0,
        "meets_accuracy_1pt": abs(accuracy_gap) <= 0.01,
        "machine": system_info(),
    }
    print(
        f"\nscikit-learn {sklearn.__version__}: fit {summary['sklearn']['fit_seconds_median']:.3f} s (median), "
        f"test accuracy {summary['sklearn']['accuracy_median']:.4f}\n"
        f"gpunn on {gpunn_device}: fit {summary['gpunn']['fit_seconds_median']:.3f} s (median), "
        f"test accuracy {summary['gpunn']['accuracy_median']:.4f}\n"
        f"speed-up {speedup:.2f}x (medians; paired within rounds {paired:.2f}x, p10-p90 "
        f"{paired_p10:.2f}-{paired_p90:.2f}), accuracy difference {100.0 * accuracy_gap:+.2f} points\n"
        f"(scikit-learn with one BLAS thread: fit {summary['sklearn_blas_1_thread']['fit_seconds_median']:.3f} s, "
        f"gpunn {speedup_1_thread:.2f}x faster)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
