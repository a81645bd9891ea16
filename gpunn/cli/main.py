"""The ``gpunn`` command line (also ``python -m gpunn``); :func:`build_parser` lists the commands.

Errors in the user's input print one line and exit with status 2, without a traceback. Under an
MPI launcher every rank runs the command and only rank 0 prints results. An error on one rank
prints "gpunn train: error on rank R of K: ..." and aborts the job (MPI_Abort), so no rank is
left waiting; one that every rank meets alike is printed once, by rank 0, and every rank exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, NoReturn

import numpy as np

from .. import __version__, distributed
from ..backend.device import DeviceUnavailableError, available_devices, device, set_matmul_precision, why_cpu
from ..backend.ops import NumpyOps
from ..io.safe_file import check_distinct
from ..optim import OPTIMIZERS
from . import job
from .sysinfo import format_info, system_info

EXIT_USAGE = 2
# what bad input, files or devices raise: one line, no traceback (MemoryError: sizes too large)
USER_ERRORS = (ValueError, TypeError, DeviceUnavailableError, OSError, ImportError, FloatingPointError, MemoryError)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        # under mpiexec every rank parses the same flags and fails alike: rank 0 alone says so
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if _is_root() else None)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 100,100, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive integers, got {text!r}")
    return sizes


def _is_root() -> bool:
    """False on ranks other than 0 of an MPI job: they print nothing but errors."""
    layout = distributed.env_layout()
    return layout is None or layout.rank == 0


def _info(args: argparse.Namespace) -> int:
    info = system_info()
    if distributed.is_launched():  # one row per rank, gathered on rank 0
        comm = distributed.world()
        try:
            dev = distributed.rank_device(None, comm)
            where, transport = str(dev), comm.planned_transport(dev)
        except (ValueError, DeviceUnavailableError) as exc:
            where, transport = f"error: {exc}", "-"
        row = {"rank": comm.rank, "local_rank": comm.local_rank, "host": platform.node(), "device": where}
        info["ranks"] = comm.allgather_json({**row, "transport": transport})
        from mpi4py import MPI  # noqa: PLC0415 — world() imported it

        info["mpi"]["library"] = " ".join(MPI.Get_library_version().splitlines()[0].split())
    if _is_root():
        print(json.dumps(info, indent=2) if args.json else format_info(info, verbose=args.verbose))
    return 1 if info["device_error"] else 0


def _train(args: argparse.Namespace) -> int:
    settings = {f.name: getattr(args, f.name) for f in fields(job.TrainConfig)}  # None: not given
    verbose = False if (args.quiet or args.json) else None
    announce = None if (args.json or args.quiet) else _announce_device
    # NumPy's floating-point warnings (a diverging --lr) would print source lines before the one-line
    # error that the Trainer raises for a NaN loss; on the host they are silenced, on a GPU there are none
    with np.errstate(all="ignore"):
        result = job.train(settings, args.device, args.save, args.resume, args.plot, verbose, announce, args.graph)
    if not _is_root():
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "model"}))
    elif not args.quiet:
        _print_result(result)
    return 0


def _announce_device(dev: Any) -> None:
    reason = why_cpu() if dev.kind == "cpu" else None
    print(f"device: {dev}" + (f" (the CPU, because {reason})" if reason else ""), flush=True)
    if distributed.is_launched():
        comm = distributed.world()
        print(
            f"ranks: {comm.size}, data-parallel; each trains on its slice of every batch "
            f"(--batch-size is the global batch); gradients summed by {comm.planned_transport(dev).upper()}",
            flush=True,
        )


def _print_result(result: dict[str, Any]) -> None:
    print(result["model"])
    print(
        f"accuracy: train {result['train_accuracy']:.4f}, dev {result['dev_accuracy']:.4f}, "
        f"test {result['test_accuracy']:.4f}"
    )
    resumed = f"resumed at epoch {result['start_epoch']}, trained " if result["start_epoch"] else ""
    print(
        f"{resumed}{result['epochs_trained']} epochs in {result['seconds']:.1f} s on {result['device']}, "
        f"{result['samples_per_s']:,.0f} samples/s"
    )
    print(result["diagnosis_text"])
    if result["checkpoint"]:
        print(f"saved: {result['checkpoint']}")
    if result["plot"]:
        print(f"learning curves: {result['plot']}")


def _evaluate(args: argparse.Namespace) -> int:
    with np.errstate(all="ignore"):  # as in _train
        result = job.evaluate(args.model, args.dataset, args.device)
    if not _is_root():
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['dataset']} test set on {result['device']}: loss {result['loss']:.4f}, "
            f"accuracy {result['accuracy']:.4f}"
        )
    return 0


def _csv(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return values

    return parse


def _check_bench_flags(args: argparse.Namespace) -> None:
    for batch in args.batch_sizes or []:
        if batch < 1:
            raise ValueError(f"--batch-sizes must be positive, got {batch}")
    if args.repeat is not None and args.repeat < 3:
        raise ValueError(f"--repeat must be at least 3 windows, got {args.repeat}")
    from ..bench.run import BASELINES  # noqa: PLC0415

    for name in args.against:
        if name not in (*BASELINES, "none"):
            raise ValueError(f"--against takes {', '.join(BASELINES)} or none, got {name!r}")
    outputs = [("--json", None if args.json in ("-", "") else args.json), ("--plot", args.plot or None)]
    if _is_root():  # only rank 0 writes them
        job.check_outputs(*outputs)
    check_distinct([], outputs)


def _devices(specs: list[str] | None) -> list[Any]:
    """The devices named on the command line, or every usable one."""
    return [device(spec) for spec in specs] if specs else available_devices()


def _bench(args: argparse.Namespace) -> int:
    from ..bench import report as table  # noqa: PLC0415
    from ..bench import run as bench  # noqa: PLC0415

    _check_bench_flags(args)
    work = bench.workload(args.models, args.batch_sizes, args.repeat, args.full)
    if args.tf32:
        set_matmul_precision("tf32")
    devices = _devices(args.devices)
    against = tuple(args.against)
    root = _is_root()
    quiet = args.json == "-" or not root
    if root:  # stderr: the plan and the progress line; stdout keeps the table (or the JSON)
        print(table.plan(devices, work, args.optimizer, against), file=sys.stderr, flush=True)
    progress = table.Progress(sys.stderr) if root else None
    if not quiet:
        print(table.header(args.optimizer))

    def report(row: dict[str, Any]) -> None:
        if progress is not None:
            progress.clear()
        if not quiet:
            print(table.format_row(row), flush=True)

    result = bench.run(devices, work, args.optimizer, against, report, progress)
    result["environment"] = {**system_info(), "torch": bench.torch_version(), "blas_threads": bench.blas_threads()}
    counted = [r for r in result["results"] if r["launches_per_step"] is not None]
    if not quiet and counted:  # counted after every case was timed (see bench.run)
        print(
            "kernel launches per gpunn step: "
            + ", ".join(f"{r['device']} {r['model']}@{r['batch']}: {r['launches_per_step']:.0f}" for r in counted)
        )
    if not quiet and result["crossover"]:
        print("GPU beats CPU from batch: " + ", ".join(f"{m}: {b}" for m, b in result["crossover"].items()))
    if not quiet and work.quick:
        print("That was the one-minute sample; every model (W1 too) and batch size, 10 windows: gpunn bench --full")
    if root and args.json == "-":
        print(json.dumps(result, indent=2))
    elif root and args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    if root and args.plot:
        table.plot(result, args.plot)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import command  # noqa: PLC0415 — imports every Ops

    return command(_devices(args.device), as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gpunn", description="Neural networks on the GPU (CuPy) or the CPU (NumPy).")
    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    info = commands.add_parser("info", help="devices, why the CPU was chosen, library versions, BLAS, GPUs")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--verbose", action="store_true", help="add the full error behind 'why the CPU'")
    info.set_defaults(run=_info)

    train = commands.add_parser("train", help="train a multilayer perceptron on the best device present")
    train.add_argument("--dataset", help="digits (built in), spiral, or mnist:PATH (default: digits)")
    train.add_argument("--hidden", type=_hidden, help="hidden layer sizes, e.g. 100,100 (default: 100)")
    train.add_argument("--activation", choices=NumpyOps.ACTIVATIONS, help="hidden-layer activation (default: relu)")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS), help="update rule (default: adam)")
    train.add_argument("--lr", type=float, help="learning rate (default: 0.001)")
    train.add_argument("--l2", type=float, help="L2 penalty λ in ½·λ·ΣW² (default: 0.0001)")
    train.add_argument("--dropout", type=float, help="dropout after each hidden layer (default: 0)")
    train.add_argument(
        "--epochs", type=int, help="total epochs, resumed ones included (default: 40; resuming, 40 more)"
    )
    train.add_argument("--batch-size", type=int, help="mini-batch size (default: 32)")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: GPUNN_DEVICE or auto)")
    train.add_argument(
        "--graph", action="store_true", help="replay each step as one CUDA graph on a GPU (no dropout; same results)"
    )
    train.add_argument("--seed", type=int, help="seed of the split, the weights and the order (default: 0)")
    train.add_argument(
        "--save", metavar="PATH", help=f"checkpoint, written at most every {job.SAVE_INTERVAL_S:g} s and at the end"
    )
    train.add_argument("--resume", metavar="PATH", help="continue a run from its checkpoint")
    train.add_argument("--plot", metavar="PNG", help="save the learning curves to this PNG")
    train.add_argument("--json", action="store_true", help="print one JSON object with the results")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    train.set_defaults(run=_train)

    bench = commands.add_parser(
        "bench",
        help="training-step speed per device, against NumPy and PyTorch: a one-minute sample, or --full",
        description="Without arguments: a one-minute sample (T1 and T2, 5 windows). Naming --models, "
        "--batch-sizes or --repeat runs what is named, the full suite's defaults for the rest.",
    )
    bench.add_argument("--devices", type=_csv(str), help="e.g. cpu,cuda:0 (default: every usable one)")
    bench.add_argument(
        "--full", action="store_true", help="the full suite: every model (W1 too) and batch size, 10 windows (minutes)"
    )
    models_help = (
        "T1 = 784-100-10, T2 = 784-1024-1024-10, W1 = 1024-4096-4096-1024 (default: T1,T2 when nothing else "
        "is named; all three with --full, --batch-sizes or --repeat)"
    )
    bench.add_argument("--models", type=_csv(str), help=models_help)
    bench.add_argument(
        "--batch-sizes", type=_csv(int), help="batch sizes for every model (default: per model and device)"
    )
    bench.add_argument("--optimizer", default="adam", choices=list(OPTIMIZERS))
    against_help = (
        "baselines: numpy (hand-written loop, CPU), torch (if installed), reference (gpunn's step on the "
        "reference Ops: what the accelerated ones gain), or none"
    )
    bench.add_argument("--against", type=_csv(str), default=["numpy", "torch"], help=against_help)
    bench.add_argument(
        "--repeat", type=int, help="timed windows per step (default: 5; 10 with --full, --models or --batch-sizes)"
    )
    bench.add_argument("--tf32", action="store_true", help="TF32 matrix products on the GPU, for gpunn and torch")
    bench.add_argument("--json", metavar="PATH", help="write every figure as JSON ('-' for stdout)")
    bench.add_argument("--plot", metavar="PNG", help="bar chart of samples/s")
    bench.set_defaults(run=_bench)

    evaluate = commands.add_parser("evaluate", help="loss and accuracy of a saved model on its test set")
    evaluate.add_argument("--model", required=True, metavar="PATH", help="a checkpoint written by gpunn train --save")
    evaluate.add_argument("--dataset", help="data set (default: the one the model was trained on)")
    evaluate.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=_evaluate)

    check = commands.add_parser(
        "check", help="every accelerated op against the reference ops, on small and edge-case inputs"
    )
    check.add_argument("--device", action="append", help="cpu or cuda:N, repeatable (default: every usable device)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(run=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def one_line_warning(message: Warning | str, *_: Any, **__: Any) -> None:
        text = (str(message).splitlines() or [""])[0].removeprefix(f"gpunn {args.command}: ")
        print(f"gpunn {args.command}: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except BrokenPipeError:
        # the reader went away (`gpunn info | head -1`): end quietly, as `head` asked, and keep
        # Python from reporting the same closed pipe again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _fail(args.command, "error", message, EXIT_USAGE, collective=getattr(exc, "collective", False))
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted", None, 130)
    except Exception as exc:
        if not distributed.is_launched():
            raise  # a bug: the traceback says where
        traceback.print_exc()
        return _fail(args.command, "error", f"{type(exc).__name__}: {exc}", 1)


def _fail(command: str, what: str, message: str | None, code: int, collective: bool = False) -> int:
    """Print "gpunn COMMAND: WHAT: MESSAGE" and return ``code``; under MPI, as the module says
    (the other ranks may be waiting in a collective for a rank that failed alone)."""
    layout = distributed.env_layout()
    alone = layout is None or layout.size == 1
    where = "" if alone or collective else f" on rank {layout.rank} of {layout.size}"
    if alone or not collective or layout.rank == 0:
        print(f"gpunn {command}: {what}{where}" + (f": {message}" if message else ""), file=sys.stderr, flush=True)
    if not (alone or collective):
        # without mpi4py, MPI never started and no rank can be waiting
        with contextlib.suppress(ImportError):
            distributed.world().abort(code)
    return code
