"""The seed's two-layer network, written with gpunn's low-level API.

a^[0] = x  →  z^[1] = a^[0]·W^[1] + b^[1]  →  a^[1] = relu(z^[1])  →  z^[2] = a^[1]·W^[2] + b^[2]
→  softmax-with-loss. Each step is spelled out: forward, cost, objective = cost + ½·λ·ΣW²,
backward ((y − t)/N through the layers), the regularizer's gradient λ·W, the optimizer step.

It trains on a spiral of three interleaved arms that it makes itself (no linear classifier
can separate them; a hidden layer can) and prints the loss per epoch and the final accuracy.

    python examples/two_layer_net.py [--device cpu|cuda:0] [--epochs 60]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gpunn as gn


def make_spiral(points_per_class: int = 100, classes: int = 3, noise: float = 0.2, seed: int = 0):
    """x (N, 2) float32 and integer labels t (N,): ``classes`` spiral arms."""
    rng = np.random.default_rng(seed)
    x = np.empty((points_per_class * classes, 2), dtype=np.float32)
    t = np.empty(points_per_class * classes, dtype=np.int64)
    for k in range(classes):
        rows = slice(k * points_per_class, (k + 1) * points_per_class)
        radius = np.linspace(0.0, 1.0, points_per_class)
        angle = np.linspace(k * 4.0, (k + 1) * 4.0, points_per_class) + rng.standard_normal(points_per_class) * noise
        x[rows] = np.c_[radius * np.sin(angle), radius * np.cos(angle)]
        t[rows] = k
    return x, t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda:0 or auto (default: GPUNN_DEVICE or auto)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--l2", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dev = gn.device(args.device)
    if dev.kind == "cpu" and gn.why_cpu():
        print(f"training on the CPU: {gn.why_cpu()}")
    x_host, t_host = make_spiral(seed=args.seed)
    x, t = dev.send(x_host), dev.send(t_host)  # the data goes to the device once
    n = x.shape[0]

    # The network: two layers with weights (L = 2), a ReLU between them.
    model = gn.Sequential(
        gn.Linear(2, args.hidden, seed=args.seed), gn.ReLU(), gn.Linear(args.hidden, 3, seed=args.seed + 1)
    )
    model.to(dev)
    print(model.summary())
    criterion = gn.SoftmaxWithLoss()
    regularizer = gn.L2(args.l2)
    optimizer = gn.optim.Adam(model.parameters(), lr=args.lr)
    params = model.parameters()

    order_rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = dev.send(order_rng.permutation(n))
        epoch_cost = dev.xp.zeros((), dtype=np.float32)  # summed on the device, read once per epoch
        for first in range(0, n, args.batch_size):
            batch = order[first : first + args.batch_size]
            xb, tb = x[batch], t[batch]
            logits = model.forward(xb)  # forward propagation
            cost = criterion.forward(logits, tb)  # Cost = mean loss over the batch
            model.backward(criterion.backward(), input_grad=False)  # backpropagation writes every grad
            regularizer.backward(params)  # grad += λ·W
            optimizer.step()  # W ← W − lr·(Adam's step)
            epoch_cost += cost * xb.shape[0]
        objective = float(epoch_cost) / n + float(regularizer.forward(params))  # Obj = Cost + R
        print(f"epoch {epoch:3d}  cost {float(epoch_cost) / n:.4f}  objective {objective:.4f}")

    model.eval()
    predictions = model.forward(x).argmax(axis=1)
    accuracy = float((predictions == t).mean())
    print(f"training accuracy: {accuracy:.3f} on {dev} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
