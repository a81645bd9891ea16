"""What gpunn's own dispatch costs a small CPU training step, against the same NumPy calls inlined.

For a two-layer ReLU network with softmax-with-loss, an L2 penalty folded into Adam and labels
as integers, this times one gpunn training step as a user's loop writes it (``model.forward``,
``loss.forward``, ``loss.backward``, ``model.backward``, ``optimizer.step(L2)``: "layered"), the
same step compiled (:class:`gpunn.train.cpu_step.CompiledStep`, what Trainer.fit and gpunn.sklearn run
on the CPU) and one step written as a single function that makes the same NumPy calls on the
same shapes (the products, bias adds and ReLU, the softmax-with-loss of gpunn's CPU path,
the bias sums as 1ᵀ·dy, the effective gradient and Adam's twelve passes over one flat buffer).
The difference is what layers, losses and the optimizer spend in Python: checks, dispatch
between the CPU twin and a GPU kernel, keyword arguments handed down a chain of calls. The
three take turns, round by round; the median of the per-round ratios to the inline step is
printed.

    python benchmarks/dispatch_overhead.py                       # the digits network, batch 200
    python benchmarks/dispatch_overhead.py --sizes 4,4,3 --batch 2  # dispatch alone
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import gpunn as gn
from gpunn.optim import create
from gpunn.train.cpu_step import CompiledStep


def gpunn_step(sizes: list[int], x: np.ndarray, t: np.ndarray, l2: float) -> Callable[[], None]:
    """gpunn's layered step, as a user's own training loop writes it."""
    model = gn.mlp(sizes, seed=0)
    loss = gn.SoftmaxWithLoss(validate=False)
    opt = create("adam", model.parameters())
    penalty = gn.L2(l2)

    def step() -> None:
        loss.forward(model.forward(x), t)
        model.backward(loss.backward(), input_grad=False)
        opt.step(penalty)

    return step


def compiled_step(sizes: list[int], x: np.ndarray, t: np.ndarray, l2: float) -> Callable[[], None]:
    """The same step compiled (gpunn.train.cpu_step), as Trainer.fit and gpunn.sklearn run it on the CPU."""
    model = gn.mlp(sizes, seed=0)
    loss = gn.SoftmaxWithLoss(validate=False)
    step = CompiledStep(model, loss, create("adam", model.parameters()), gn.L2(l2))
    return lambda: step(x, t)


def inline_step(sizes: list[int], x: np.ndarray, t: np.ndarray, l2: float) -> Callable[[], None]:
    """The same NumPy calls with every view and constant bound once (Adam's step number fixed:
    the constants do not change the cost)."""
    n_in, n_hidden, n_out = sizes
    batch = x.shape[0]
    rng = np.random.default_rng(0)
    n_w = n_in * n_hidden + n_hidden * n_out
    n = n_w + n_hidden + n_out
    p = (rng.standard_normal(n) * 0.1).astype(np.float32)
    g = np.zeros(n, np.float32)
    w1, w2 = p[: n_in * n_hidden].reshape(n_in, n_hidden), p[n_in * n_hidden : n_w].reshape(n_hidden, n_out)
    b1, b2 = p[n_w : n_w + n_hidden], p[n_w + n_hidden :]
    gw1, gw2 = g[: n_in * n_hidden].reshape(n_in, n_hidden), g[n_in * n_hidden : n_w].reshape(n_hidden, n_out)
    gb1, gb2 = g[n_w : n_w + n_hidden], g[n_w + n_hidden :]
    zero_row, ones, ones_c = np.zeros(n_hidden, np.float32), np.ones(batch, np.float32), np.ones(n_out, np.float32)
    offsets = np.arange(0, batch * n_out, n_out)
    update = inline_adam_with_l2(p, g, n_w, l2)

    def step() -> None:
        h = x @ w1
        h += b1
        np.maximum(h, zero_row, out=h)
        z = h @ w2
        z += b2
        shifted = z - z.T.copy().max(axis=0)[:, None]
        exp = np.exp(shifted)
        sums = (exp @ ones_c)[:, None]
        at = offsets + t
        (np.log(sums).sum() - shifted.ravel().take(at).sum()) * (1.0 / batch)
        y = exp / sums
        y.ravel()[at] -= 1.0
        y *= 1.0 / batch
        np.matmul(h.T, y, out=gw2)
        np.matmul(ones, y, out=gb2)
        dh = y @ w2.T
        np.multiply(dh, h > 0, out=dh)
        np.matmul(ones, dh, out=gb1)
        np.matmul(x.T, dh, out=gw1)
        update()

    return step


def inline_adam_with_l2(p: np.ndarray, g: np.ndarray, n_w: int, l2: float) -> Callable[[], None]:
    """gpunn's CPU Adam with the L2 term on the first ``n_w`` elements, the same NumPy calls."""
    n = p.size
    m, v, effective, scratch = (np.zeros(n, np.float32) for _ in range(4))
    pw, gw, ew, eb, gb = p[:n_w], g[:n_w], effective[:n_w], effective[n_w:], g[n_w:]
    step_size, inv_sqrt_bc2 = 1e-3 / (1 - 0.9**5), 1 / (1 - 0.999**5) ** 0.5

    def update() -> None:
        np.multiply(pw, l2, out=ew)
        np.add(ew, gw, out=ew)
        eb[...] = gb
        np.multiply(m, 0.9, out=m)
        np.multiply(effective, 0.1, out=scratch)
        np.add(m, scratch, out=m)
        np.multiply(v, 0.999, out=v)
        np.multiply(effective, effective, out=scratch)
        np.multiply(scratch, 0.001, out=scratch)
        np.add(v, scratch, out=v)
        np.sqrt(v, out=scratch)
        np.multiply(scratch, inv_sqrt_bc2, out=scratch)
        np.add(scratch, 1e-8, out=scratch)
        np.divide(m, scratch, out=scratch)
        np.multiply(scratch, step_size, out=scratch)
        np.subtract(p, scratch, out=p)

    return update


def per_step_us(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,100,10", help="n_in,n_hidden,n_out (default 64,100,10: digits)")
    parser.add_argument("--batch", type=int, default=200, help="rows per step (default 200)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds of each (default 15)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) != 3 or min(sizes) < 1 or args.batch < 1 or args.rounds < 3:
        parser.error("--sizes takes three positive integers; --batch >= 1; --rounds >= 3")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((args.batch, sizes[0])).astype(np.float32)
    t = rng.integers(0, sizes[2], args.batch)
    l2 = 1e-4 / args.batch  # scikit-learn's alpha / n_batch
    steps = {
        "layered": gpunn_step(sizes, x, t, l2),
        "compiled": compiled_step(sizes, x, t, l2),
        "inline": inline_step(sizes, x, t, l2),
    }
    one = max(per_step_us(s, 20) for s in steps.values())
    per_round = max(20, int(50_000 / one))  # rounds of about 50 ms
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(per_step_us(step, per_round))
    print(f"{args.sizes} at batch {args.batch}: µs per step (median of {args.rounds} rounds), ÷ inline (median ratio)")
    for name, per_round in times.items():
        ratio = statistics.median(a / b for a, b in zip(per_round, times["inline"], strict=True))
        print(f"  {name:9s} {statistics.median(per_round):7.1f}  {ratio:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
