"""Time gpunn.sklearn's MLPClassifier fit on the digits alone: one number per process, to compare
two versions of gpunn by alternating processes (a fit of each is ~0.3 s, too short to share one
process: both would import as ``gpunn``).

    git worktree add /tmp/before <commit>
    for i in 1 2 3; do for p in /tmp/before .; do PYTHONPATH=$p python benchmarks/sklearn_digits_fit.py; done; done

The same task as benchmarks/sklearn_digits.py (75/25 split, random_state=0, hidden_layer_sizes
(100,), defaults otherwise); prints the gpunn it imported, the median of ``--fits`` fits after
one warm-up fit, the epochs and the test accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

import gpunn
from gpunn.sklearn import MLPClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=5, help="timed fits after one warm-up fit (default 5)")
    args = parser.parse_args()
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    warnings.simplefilter("ignore", ConvergenceWarning)
    times = []
    for i in range(args.fits + 1):
        model = MLPClassifier(hidden_layer_sizes=(100,), random_state=0, device="cpu")
        start = time.perf_counter()
        model.fit(x_train, y_train)
        if i:
            times.append(time.perf_counter() - start)
    where = gpunn.__file__.rsplit("/gpunn/", 1)[0]
    print(f"{where}: fit {statistics.median(times):.3f} s (median of {args.fits}), "
          f"{model.n_iter_} epochs, test accuracy {model.score(x_test, y_test):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
