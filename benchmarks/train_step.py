"""Time one training step (forward, softmax-with-loss, backward, Adam) of gpunn, and of
PyTorch eager with the same shapes, weights and optimizer when torch is installed.

Frameworks are interleaved window by window (A/B/A/B) so that drift on a shared machine
cancels; each window is timed after synchronizing the device; the result is the median
milliseconds per step with p10/p90 over the windows, and the gpunn / torch ratio.

    python benchmarks/train_step.py --devices cpu,cuda:0 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import gpunn as gn

MODELS = {"T1": [784, 100, 10], "T2": [784, 1024, 1024, 10], "W1": [1024, 4096, 4096, 1024]}


def gpunn_step(sizes: list[int], batch: int, dev: gn.Device, seed: int = 0) -> tuple[Callable[[], Any], gn.Sequential]:
    rng = np.random.default_rng(seed)
    x = dev.send(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    t = dev.send(rng.integers(0, sizes[-1], batch))
    model = gn.mlp(sizes, seed=seed).to(dev)
    criterion = gn.SoftmaxWithLoss(validate=False)  # labels are valid by construction
    optimizer = gn.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> Any:
        loss = criterion.forward(model.forward(x), t)
        model.backward(criterion.backward(), input_grad=False)
        optimizer.step()
        return loss

    return step, model


def torch_step(sizes: list[int], batch: int, dev: gn.Device, like: gn.Sequential, seed: int = 0) -> Callable[[], Any]:
    import torch  # noqa: PLC0415 — optional baseline

    target = "cpu" if dev.kind == "cpu" else f"cuda:{dev.index}"
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.standard_normal((batch, sizes[0])).astype(np.float32), device=target)
    t = torch.tensor(rng.integers(0, sizes[-1], batch), device=target)
    layers: list[Any] = []
    linears = [layer for layer in like if isinstance(layer, gn.Linear)]
    for i, lin in enumerate(linears):
        module = torch.nn.Linear(lin.n_in, lin.n_out)
        with torch.no_grad():  # the same initial weights as gpunn's model
            module.weight.copy_(torch.tensor(gn.to_numpy(lin.W.data).T))
            module.bias.copy_(torch.tensor(gn.to_numpy(lin.b.data)))
        layers.append(module)
        if i < len(linears) - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(target)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()

    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), t)
        loss.backward()
        optimizer.step()
        return loss

    return step


def synchronizer(dev: gn.Device) -> Callable[[], None]:
    if dev.kind == "cpu":
        return lambda: None
    try:
        import torch  # noqa: PLC0415

        def both() -> None:
            dev.synchronize()
            torch.cuda.synchronize(dev.index)

        return both
    except ImportError:
        return dev.synchronize


def measure(
    steps: dict[str, Callable[[], Any]], sync: Callable[[], None], warmup: int, windows: int, per_window: int
) -> dict[str, list[float]]:
    """Milliseconds per step of each window, frameworks interleaved window by window."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(windows):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(per_window):
                step()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3 / per_window)
    return times


def summarize(ms: list[float], batch: int) -> dict[str, float]:
    median = float(np.median(ms))
    return {
        "ms_per_step": median,
        "ms_p10": float(np.percentile(ms, 10)),
        "ms_p90": float(np.percentile(ms, 90)),
        "samples_per_s": batch / median * 1e3,
        "windows": len(ms),
    }


def run(devices: list[gn.Device], configs: list[tuple[str, int]], windows: int, against_torch: bool) -> dict[str, Any]:
    results = []
    for dev in devices:
        for name, batch in configs:
            sizes = MODELS[name]
            step, model = gpunn_step(sizes, batch, dev)
            steps = {"gpunn": step}
            if against_torch:
                steps["torch"] = torch_step(sizes, batch, dev, model)
            big = sizes[1] >= 1000
            with dev:
                times = measure(
                    steps,
                    synchronizer(dev),
                    warmup=5 if big else 30,
                    windows=windows,
                    per_window=5 if big and dev.kind == "cpu" else 50,
                )
            row: dict[str, Any] = {"device": str(dev), "model": name, "sizes": sizes, "batch": batch}
            for framework, ms in times.items():
                row[framework] = summarize(ms, batch)
            if "torch" in row:
                row["gpunn_over_torch_samples_per_s"] = row["gpunn"]["samples_per_s"] / row["torch"]["samples_per_s"]
            print(json.dumps(row))
            results.append(row)
    return {"results": results}


def environment(devices: list[gn.Device]) -> dict[str, Any]:
    from gpunn.sysinfo import system_info  # noqa: PLC0415

    env = {"python": platform.python_version(), **system_info()}
    try:
        import torch  # noqa: PLC0415

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        env["torch"] = None
    env["benchmarked_devices"] = [str(d) for d in devices]
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default=",".join(str(d) for d in gn.available_devices()))
    parser.add_argument("--configs", default="T1:128,T1:1024,T2:1024", help="MODEL:BATCH,... (models: T1, T2, W1)")
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    devices = [gn.device(spec) for spec in args.devices.split(",") if spec]
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    against_torch = not args.no_torch
    if against_torch:
        try:
            import torch  # noqa: PLC0415

            torch.backends.cuda.matmul.allow_tf32 = False  # FP32 on both sides
            from threadpoolctl import threadpool_info  # noqa: PLC0415

            blas_threads = [lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"]
            if blas_threads:
                torch.set_num_threads(blas_threads[0])  # equal threads on the CPU
        except ImportError:
            against_torch = False
    report = {"environment": environment(devices), **run(devices, configs, args.windows, against_torch)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
