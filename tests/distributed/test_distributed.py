"""Data-parallel training over MPI (and NCCL on a GPU): exactness, shards, resume, failures.

The multi-process tests start ``mpiexec -n 2 python tests/distributed/test_distributed.py SCENARIO OUT``:
this file is also the worker script (see :func:`worker`). They skip where mpiexec or mpi4py is
missing, unless GPUNN_EXPECT_MPI=1 (set by CI), where they fail instead.

"Relative error" below is norm-wise: ‖a − b‖₂ / ‖b‖₂ over the whole flat parameter buffer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpunn as gn
from gpunn.distributed import comm as dist
from gpunn.distributed.data_parallel import DataParallel, epoch_shards
from gpunn.distributed.data_parallel import fingerprint as dist_fingerprint

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
EXPECT_MPI = os.environ.get("GPUNN_EXPECT_MPI") == "1"
needs_mpi = pytest.mark.skipif(
    not HAVE_MPI and not EXPECT_MPI, reason='needs mpiexec and mpi4py: pip install "gpunn[mpi]"'
)
LAUNCHER_VARS = [name for names in dist._LAUNCHER_ENV for name in names]
EPOCHS, LR, L2 = 3, 1e-2, 1e-3
BATCH = {"float64": 100, "float32": 64}  # 1201 rows: a last batch of 1 row (rank 0 gets none), and of 49
NCCL_UNIQUE_ID_BYTES = 128  # the size of NCCL's ncclUniqueId


# ----------------------------------------------------------------------------- shared set-up


def digits_with_index(n: int = 1201) -> tuple[np.ndarray, ...]:
    """Standardized digits (n, 65) whose last column is row/1024 (exact in float32), so the
    rows a rank trained on can be read back from the batches; dev part (·, 65)."""
    x, y = gn.data.load_digits()
    (xt, yt), (xd, yd), _ = gn.data.split(x, y, fractions=(0.7, 0.15, 0.15), seed=0)
    _, xt, xd = gn.data.standardize(xt[:n], xd)
    xt = np.hstack([xt, (np.arange(n) / 1024.0)[:, None]])
    xd = np.hstack([xd, np.zeros((len(xd), 1))])
    return xt, yt[:n], xd, yd


def make_trainer(dtype: str, distributed: Any = None, device: str = "cpu") -> gn.Trainer:
    model = gn.mlp([65, 32, 10], dtype=dtype, seed=0)
    return gn.Trainer(
        model,
        gn.SoftmaxWithLoss(),
        gn.optim.Adam(lr=LR),
        regularizer=gn.L2(L2),
        device=device,
        distributed=distributed,
    )


def fit(trainer: gn.Trainer, dtype: str, callbacks: Any = ()) -> gn.History:
    xt, yt, xd, yd = digits_with_index()
    return trainer.fit(
        xt, yt, epochs=EPOCHS, batch_size=BATCH[dtype], validation_data=(xd, yd), seed=3, callbacks=callbacks
    )


def weights(trainer: gn.Trainer) -> np.ndarray:
    return gn.to_numpy(trainer.model.parameters()[0].flat.data).copy()


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- the worker


def train_scenario(comm: dist.Communicator, out: Path) -> None:
    """Both dtypes with the rows each step trained on; a stop asked by one rank; mismatches."""
    rows: list[list[list[int]]] = []
    for dtype in ("float64", "float32"):
        trainer = make_trainer(dtype)
        if dtype == "float64":  # record the rows every step of this rank trained on
            batches = trainer._parallel.batches

            def spy(x: Any, y: Any, *order: Any, batches: Any = batches) -> Any:
                rows.append([])
                for xb, yb in batches(x, y, *order):
                    rows[-1].append(np.rint(xb[:, -1] * 1024).astype(int).tolist())
                    yield xb, yb

            trainer._parallel.batches = spy
        history = fit(trainer, dtype)
        if comm.is_root:
            np.save(out / f"{dtype}.npy", weights(trainer))
            (out / f"{dtype}.json").write_text(json.dumps(history.to_dict()))
    all_rows = comm.allgather_json(rows)
    if comm.is_root:
        (out / "rows.json").write_text(json.dumps(all_rows))
    # a callback asking to stop on one rank stops every rank at the same epoch
    trainer = make_trainer("float64")
    stop_on_rank_1 = lambda t, record: setattr(t, "stop_training", comm.rank == 1)  # noqa: E731
    epochs = len(fit(trainer, "float64", callbacks=[stop_on_rank_1]))
    # ranks that disagree get a clear error, on every rank, and can go on
    messages = []
    xt, yt, _, _ = digits_with_index()
    for case in ("model", "batch_size", "x", "y"):
        hidden = 16 if case == "model" and comm.rank == 1 else 32
        trainer = gn.Trainer(gn.mlp([65, hidden, 10], seed=0), gn.SoftmaxWithLoss(), gn.optim.SGD(), device="cpu")
        x, y = one_element_changed(xt, yt, case if comm.rank == 1 else "")
        try:
            trainer.fit(x, y, epochs=1, batch_size=50 * (comm.rank + 1) if case == "batch_size" else 50)
        except dist.DistributedMismatchError as exc:
            messages.append(str(exc))
    (out / f"rank{comm.rank}.json").write_text(json.dumps({"stopped_after": epochs, "errors": messages}))


def one_element_changed(x: np.ndarray, y: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y), with one element changed in ``which`` ("x": x[123, 7], "y": y[123], "": none):
    a row that a sample of evenly spaced rows would miss."""
    x, y = x.copy(), y.copy()
    if which == "x":
        x[123, 7] += 1e-3  # a change that float32, which the model computes in, keeps
    elif which == "y":
        y[123] = (y[123] + 1) % 10
    return x, y


def data_mismatch_scenario(comm: dist.Communicator, out: Path) -> None:
    """Rank 1's labels differ from rank 0's in y[123] only, in a plain script: the fit stops."""
    xt, yt, _, _ = digits_with_index()
    make_trainer("float32").fit(*one_element_changed(xt, yt, "y" if comm.rank == 1 else ""), epochs=3, batch_size=64)
    (out / f"rank{comm.rank}-trained").touch()


def raise_scenario(comm: dist.Communicator, out: Path) -> None:
    """An uncaught exception on rank 1 only, in a plain script."""
    trainer = make_trainer("float32")

    def fail(t: gn.Trainer, record: dict[str, Any]) -> None:
        if comm.rank == 1 and record["epoch"] == 2:
            raise KeyError("callback failed on purpose")

    trainer.fit(*digits_with_index()[:2], epochs=1000, batch_size=64, callbacks=[fail])


def cli_raise_scenario(comm: dist.Communicator, out: Path) -> None:
    """gpunn train's own error path: an error on rank 1 only, in its second epoch."""
    original = gn.Trainer._epoch

    def epoch(self: gn.Trainer, *args: Any) -> Any:
        if self.comm.rank == 1 and args[3] == 1:
            raise ValueError("this rank's data went bad on purpose")
        return original(self, *args)

    gn.Trainer._epoch = epoch
    from gpunn.cli import main as cli  # noqa: PLC0415

    sys.exit(cli.main(["train", "--dataset", "spiral", "--epochs", "1000", "--device", "cpu", "--quiet"]))


def own_comm_raise_scenario(comm: None, out: Path) -> None:
    """As raise_scenario, on a Communicator the script builds itself (host staging asked for):
    gn.distributed.world(), which installs the abort hook, is never called."""
    from mpi4py import MPI  # noqa: PLC0415

    own = dist.Communicator(MPI.COMM_WORLD, nccl=False)
    trainer = make_trainer("float32", distributed=own)

    def fail(t: gn.Trainer, record: dict[str, Any]) -> None:
        if own.rank == 1 and record["epoch"] == 2:
            raise KeyError("callback failed on purpose")

    trainer.fit(*digits_with_index()[:2], epochs=1000, batch_size=64, callbacks=[fail])


def nccl_rendezvous_scenario(comm: dist.Communicator, out: Path) -> None:
    """NCCL's id exchange over real MPI, with a stand-in for cupy.cuda.nccl."""
    made: list[tuple[int, bytes, int]] = []
    fake = types.SimpleNamespace(
        get_unique_id=lambda: os.urandom(NCCL_UNIQUE_ID_BYTES),
        NcclCommunicator=lambda size, uid, rank: made.append((size, uid, rank)) or "communicator",
    )
    assert comm._nccl_rendezvous(fake, f"gpu-{comm.rank}") == "communicator"
    uids = comm.allgather_json([made[0][0], made[0][1].hex(), made[0][2]])
    try:
        comm._nccl_rendezvous(fake, "the same gpu")
        duplicate = None
    except dist.DistributedMismatchError as exc:
        duplicate = str(exc)
    (out / f"rank{comm.rank}.json").write_text(json.dumps({"made": uids, "duplicate": duplicate}))


SCENARIOS = {
    "train": train_scenario,
    "raise": raise_scenario,
    "data-mismatch": data_mismatch_scenario,
    "cli-raise": cli_raise_scenario,
    "own-comm-raise": own_comm_raise_scenario,
    "nccl-rendezvous": nccl_rendezvous_scenario,
}


def worker(scenario: str, out: Path) -> None:
    """What each rank runs under mpiexec; rank 0 writes the results into ``out``."""
    SCENARIOS[scenario](None if scenario == "own-comm-raise" else dist.world(), out)


# ----------------------------------------------------------------------------- running mpiexec


def mpirun(
    *args: str, n: int = 2, cwd: Path | None = None, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``mpiexec -n N ARGS`` (ARGS after the python executable), with a timeout that kills the
    whole process group, so a hang fails the test instead of blocking the suite; ``env_extra``
    is added to the ranks' environment."""
    if MPIEXEC is None:
        pytest.fail("mpiexec is missing but GPUNN_EXPECT_MPI=1: install the test extra (mpi4py, mpich)")
    env = {k: v for k, v in os.environ.items() if k != "GPUNN_DEVICE" and k not in LAUNCHER_VARS}
    env.update(
        OPENBLAS_NUM_THREADS="1",  # 2 ranks on 2 cores
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        OMPI_ALLOW_RUN_AS_ROOT="1",  # in case the mpiexec found is Open MPI's
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
    )
    env.update(env_extra or {})
    command = [MPIEXEC, "-n", str(n), sys.executable, *args]
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(command)} hung for {TIMEOUT} s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def gpunn_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GPUNN_DEVICE" and k not in LAUNCHER_VARS}
    return subprocess.run(
        [sys.executable, "-m", "gpunn", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "train" scenario, run once for the tests that read its results."""
    out = tmp_path_factory.mktemp("train")
    ok(mpirun(__file__, "train", str(out)))
    return out


# ----------------------------------------------------------------------------- under mpiexec


def test_mpi_is_installed_where_expected() -> None:
    if EXPECT_MPI:
        assert HAVE_MPI, 'GPUNN_EXPECT_MPI=1 but mpiexec or mpi4py is missing: pip install -e ".[test]"'


@needs_mpi
@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-10), ("float32", 1e-5)])
def test_two_ranks_train_the_weights_one_process_trains(trained: Path, dtype: str, tolerance: float) -> None:
    single = make_trainer(dtype, distributed=False)
    history = fit(single, dtype)
    assert relative(np.load(trained / f"{dtype}.npy"), weights(single)) < tolerance
    records = json.loads((trained / f"{dtype}.json").read_text())["records"]
    assert len(records) == EPOCHS
    for got, want in zip(records, history.records, strict=True):
        for key in ("cost", "objective", "dev_loss"):
            assert got[key] == pytest.approx(want[key], rel=tolerance * 10), key
        assert got["train_accuracy"] == pytest.approx(want["train_accuracy"], abs=2 / 1201)
        assert got["dev_accuracy"] == pytest.approx(want["dev_accuracy"], abs=2 / 270)


@needs_mpi
def test_ranks_train_on_disjoint_slices_of_the_single_process_batches(trained: Path) -> None:
    rank_rows = json.loads((trained / "rows.json").read_text())  # [rank][epoch][step] -> rows
    n = 1201
    order = np.arange(n)
    for epoch in range(EPOCHS):
        expected = [idx.tolist() for idx, _ in gn.data.batches(order, order, BATCH["float64"], seed=3, epoch=epoch)]
        steps = [rank_rows[r][epoch] for r in range(2)]
        assert len(steps[0]) == len(steps[1]) == len(expected)
        for step, batch in enumerate(expected):
            first, second = steps[0][step], steps[1][step]
            assert not set(first) & set(second)
            assert first + second == batch  # rank 0 takes the head of the batch, rank 1 the tail
            assert abs(len(first) - len(second)) <= 1
        assert sorted(r for rank in steps for step in rank for r in step) == list(range(n))
    assert steps[0][-1] == [] and len(steps[1][-1]) == 1  # the 1-row last batch


@needs_mpi
def test_stop_request_on_one_rank_and_mismatches_reach_every_rank(trained: Path) -> None:
    for rank in range(2):
        result = json.loads((trained / f"rank{rank}.json").read_text())
        assert result["stopped_after"] == 1
        model_error, batch_error, x_error, y_error = result["errors"]
        assert "ranks disagree on architecture.layers[0].n_out: rank 0 has 32, rank 1 has 16" in model_error
        assert "ranks disagree on batch_size: rank 0 has 50, rank 1 has 100" in batch_error
        assert "ranks disagree on data.x: rank 0 has " in x_error  # one element of one row
        assert "ranks disagree on data.y: rank 0 has " in y_error


@needs_mpi
@pytest.mark.parametrize("scenario", ["raise", "own-comm-raise", "cli-raise", "data-mismatch"])
def test_a_rank_that_raises_ends_the_job_within_seconds(tmp_path: Path, scenario: str) -> None:
    start = time.monotonic()
    result = mpirun(__file__, scenario, str(tmp_path))
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 10, f"the job took {elapsed:.1f} s to end"
    if scenario in ("raise", "own-comm-raise"):
        assert "rank 1: KeyError: 'callback failed on purpose'" in result.stderr
    elif scenario == "data-mismatch":  # every rank raises it; the first to report it ends the job
        assert re.search(r"rank [01]: DistributedMismatchError: ranks disagree on data\.y: ", result.stderr)
        assert not list(tmp_path.glob("rank*-trained"))
    else:
        assert "gpunn train: error on rank 1 of 2: this rank's data went bad on purpose" in result.stderr
        assert "Traceback" not in result.stderr


@needs_mpi
def test_gpunn_train_under_mpiexec_and_resume_across_modes(tmp_path: Path) -> None:
    common = ["--dataset", "spiral", "--device", "cpu", "--json"]
    # 2 epochs on 2 ranks -> resumed to 4 in one process; and the other way round
    result = ok(mpirun("-m", "gpunn", "train", *common, "--epochs", "2", "--save", "mpi.st", cwd=tmp_path))
    text = result.stdout.strip()
    assert text.count("\n") == 0 and text.startswith("{"), f"expected one JSON object:\n{result.stdout}"
    summary = json.loads(text)
    assert summary["ranks"] == {"size": 2, "devices": ["cpu", "cpu"]} and summary["epochs"] == 2
    ok(gpunn_cli("train", *common, "--epochs", "4", "--resume", "mpi.st", cwd=tmp_path))
    ok(gpunn_cli("train", *common, "--epochs", "2", "--save", "single.st", cwd=tmp_path))
    ok(mpirun("-m", "gpunn", "train", *common, "--epochs", "4", "--resume", "single.st", cwd=tmp_path))
    ok(gpunn_cli("train", *common, "--epochs", "4", "--save", "straight.st", cwd=tmp_path))
    straight = gn.checkpoint.read(tmp_path / "straight.st", device="cpu")
    expected = np.concatenate([p.data.ravel() for p in straight.model.parameters()])
    for name in ("mpi.st", "single.st"):
        resumed = gn.checkpoint.read(tmp_path / name, device="cpu")
        assert resumed.metadata["epoch"] == 4 and len(resumed.metadata["history"]["records"]) == 4
        got = np.concatenate([p.data.ravel() for p in resumed.model.parameters()])
        assert relative(got, expected) < 1e-5, name
        assert resumed.optimizer_info["step"] == straight.optimizer_info["step"]


@needs_mpi
def test_an_error_every_rank_meets_is_printed_once(tmp_path: Path) -> None:
    args = ["--dataset", "spiral", "--epochs", "3", "--device", "cpu", "--optimizer", "sgd", "--lr", "1e30"]
    result = mpirun("-m", "gpunn", "train", *args, "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("gpunn train: error")]
    assert len(errors) == 1, result.stderr  # rank 0 alone reports it: every rank diverged alike
    assert errors[0].startswith("gpunn train: error: the loss became nan at epoch 1, step ")


@needs_mpi
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "gpunn train: error: epochs must be >= 1, got 0"),
        (["--optimizer", "foo"], "gpunn train: error: argument --optimizer: invalid choice: 'foo'"),
    ],
)
def test_a_bad_flag_under_mpiexec_is_reported_once_without_an_abort(tmp_path: Path, flags: list, message: str) -> None:
    result = mpirun("-m", "gpunn", "train", "--device", "cpu", *flags, "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("gpunn train: error")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert "MPI_Abort" not in result.stderr


@needs_mpi
def test_gpunn_info_under_mpiexec_shows_every_rank(tmp_path: Path) -> None:
    # pinned to the CPU: on a machine with one GPU, two ranks would (rightly) be told they
    # cannot share it, which is not what this test is about
    cpu = {"GPUNN_DEVICE": "cpu"}
    result = ok(mpirun("-m", "gpunn", "info", "--json", cwd=tmp_path, env_extra=cpu))
    info = json.loads(result.stdout)  # one object: rank 0 alone prints
    assert [(r["rank"], r["local_rank"], r["device"]) for r in info["ranks"]] == [(0, 0, "cpu"), (1, 1, "cpu")]
    assert info["mpi"]["launched"]["size"] == 2
    text = ok(mpirun("-m", "gpunn", "info", cwd=tmp_path, env_extra=cpu)).stdout
    assert "ranks: 2" in text and text.count("gpunn 0") == 1


@needs_mpi
def test_nccl_unique_id_travels_over_mpi(tmp_path: Path) -> None:
    ok(mpirun(__file__, "nccl-rendezvous", str(tmp_path)))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    made = results[0]["made"]
    assert made == results[1]["made"]
    (size0, uid0, rank0), (size1, uid1, rank1) = made
    assert (size0, rank0, size1, rank1) == (2, 0, 2, 1)
    assert uid0 == uid1 and len(bytes.fromhex(uid0)) == NCCL_UNIQUE_ID_BYTES
    for result in results:
        assert "ranks 0 and 1 both use the GPU the same gpu" in result["duplicate"]


# ----------------------------------------------------------------------------- in this process


def test_import_gpunn_does_not_start_mpi() -> None:
    code = "import sys, gpunn; print('mpi4py' in sys.modules, gpunn.distributed.is_launched())"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_launcher_environment_is_read_without_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    assert dist.env_layout() is None and not dist.is_launched()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    assert dist.env_layout() == dist.Layout(3, 4, 1) and dist.is_launched()
    monkeypatch.setenv("PMI_RANK", "0")  # MPICH's Hydra is looked at first
    monkeypatch.setenv("PMI_SIZE", "1")
    assert dist.env_layout() == dist.Layout(0, 1, 0) and not dist.is_launched()


@pytest.mark.parametrize("shuffle", [True, False])
def test_epoch_shards_cut_each_batch_into_contiguous_slices(shuffle: bool) -> None:
    for n, batch, size in [(13, 4, 2), (10, 3, 3), (7, 7, 4), (9, 5, 1)]:
        order = np.arange(n)
        expected = [idx for idx, _ in gn.data.batches(order, order, batch, shuffle=shuffle, seed=1, epoch=2)]
        shards = [epoch_shards(n, batch, r, size, shuffle=shuffle, seed=1, epoch=2) for r in range(size)]
        for step, idx in enumerate(expected):
            assert all(shard[step][1] == len(idx) for shard in shards)
            np.testing.assert_array_equal(np.concatenate([shard[step][0] for shard in shards]), idx)


def test_distributed_with_one_process_is_the_plain_trainer(device: gn.Device) -> None:
    plain = make_trainer("float64", distributed=False, device=str(device))
    fit(plain, "float64")
    lone = make_trainer("float64", distributed=True, device=str(device))  # no launcher: a lone process
    assert lone.comm.size == 1 and lone.is_root
    fit(lone, "float64")
    np.testing.assert_array_equal(weights(lone), weights(plain))
    assert lone.history.records[-1]["cost"] == plain.history.records[-1]["cost"]


def test_each_rank_picks_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist.backend, "gpu_count", lambda: 2)
    probed = []
    choose = dist.backend.device

    def probe(spec):  # a GPU's test kernel runs: it works
        if str(spec).startswith("cuda:"):
            probed.append(int(str(spec)[5:]))
            return gn.Device("cuda", probed[-1])
        return choose(spec)

    monkeypatch.setattr(dist.backend, "device", probe)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("GPUNN_DEVICE", raising=False)
    comm = dist.Communicator()
    comm.local_rank, comm.local_size = 1, 2
    assert dist.rank_device(None, comm) == dist.rank_device("cuda", comm) == gn.Device("cuda", 1)
    assert probed == [1, 1]  # only this rank's GPU is touched
    assert dist.rank_device("cpu", comm) == gn.Device("cpu")
    comm.local_size = 3
    with pytest.raises(gn.DeviceUnavailableError, match="3 ranks run on this node but it has 2 GPU"):
        dist.rank_device("auto", comm)
    monkeypatch.setattr(dist.backend, "gpu_count", lambda: 0)
    assert dist.rank_device("auto", comm) == gn.Device("cpu")


def test_an_empty_gpunn_device_means_auto_on_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPUNN_DEVICE= (set but empty, as CI files write an unset value) is "auto": cuda:<local rank>,
    not cuda:0 for every rank."""
    monkeypatch.setattr(dist.backend, "gpu_count", lambda: 2)
    monkeypatch.setattr(dist.backend, "device", lambda spec: gn.Device("cuda", int(str(spec)[5:])))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    comm = dist.Communicator()
    comm.local_rank, comm.local_size = 1, 2
    for empty in ("", "  "):
        monkeypatch.setenv("GPUNN_DEVICE", empty)
        assert dist.rank_device(None, comm) == gn.Device("cuda", 1)


def test_auto_falls_back_to_the_cpu_when_the_ranks_gpu_fails_its_test_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist.backend, "gpu_count", lambda: 2)

    def failing(spec):
        raise gn.DeviceUnavailableError(f"device {spec!r}: a test kernel failed")

    monkeypatch.setattr(dist.backend, "device", failing)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    comm = dist.Communicator()
    comm.local_rank, comm.local_size = 1, 2
    fallback = r"rank 0: device 'cuda:1': a test kernel failed; this rank trains on the CPU"
    with pytest.warns(RuntimeWarning, match=fallback):
        assert dist.rank_device("auto", comm) == gn.Device("cpu")  # as gn.device("auto") does
    with pytest.raises(gn.DeviceUnavailableError, match="rank 0's GPU: device 'cuda:1': a test kernel failed"):
        dist.rank_device("cuda", comm)  # asked for by name: never a silent fallback


def test_a_device_spec_that_is_no_string_is_named() -> None:
    with pytest.raises(TypeError, match="device spec must be a string such as 'cuda:0' or a Device, got 0"):
        dist.rank_device(0, dist.Communicator())


def test_nccl_false_stages_through_the_host_without_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings  # noqa: PLC0415

    for want, warned in ((False, False), (None, True)):
        comm = dist.Communicator(nccl=want)
        comm.size = 2
        rows = [{"host": "a", "gpu": "0", "nccl": False}, {"host": "a", "gpu": "1", "nccl": False}]
        monkeypatch.setattr(comm, "allgather_json", lambda row, rows=rows: rows)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert comm._nccl_rendezvous(None, "0", "nccl=False was asked for") is None
        assert any("NCCL is not usable" in str(w.message) for w in caught) == warned


def test_global_batch_smaller_than_the_ranks_is_refused() -> None:
    class Two(dist.Communicator):
        def __init__(self) -> None:
            super().__init__()
            self.size = 2

    trainer = make_trainer("float32", distributed=Two())
    with pytest.raises(ValueError, match="batch_size is the global batch over all 2 ranks"):
        trainer.fit(*digits_with_index()[:2], epochs=1, batch_size=1)


def test_a_partial_optimizer_is_refused_distributed() -> None:
    # a Trainer widens a partial binding before this check; a direct caller meets it on every
    # rank alike: the gradient sum covers the whole model
    trainer = make_trainer("float32", distributed=dist.Communicator())
    last = trainer.model.layers[-1]
    trainer.optimizer.bind([last.W, last.b])
    x, y = digits_with_index()[:2]
    with pytest.raises(ValueError, match="bind the optimizer to all 4 of the model's parameters"):
        trainer._parallel.start(trainer, x, y, None, epochs=1, batch_size=8)


def test_a_parameter_replaced_between_distributed_fits_is_trained() -> None:
    trainer = make_trainer("float32", distributed=dist.Communicator())
    x, y = digits_with_index()[:2]
    trainer.fit(x, y, epochs=1, batch_size=8)
    layer = trainer.model.layers[0]
    layer.W = gn.Parameter(np.full(layer.W.shape, 0.01, layer.W.data.dtype))
    trainer.fit(x, y, epochs=1, batch_size=8)
    assert layer.W.name == "0.W" and not np.all(layer.W.data == np.float32(0.01))


def test_agreement_names_the_first_difference() -> None:
    class Gathered(dist.Communicator):
        def allgather_json(self, value: Any) -> list[Any]:
            other = json.loads(json.dumps(value))
            other["optimizer"]["betas"][1] = 0.99
            return [value, other]

    parallel = DataParallel(Gathered())
    with pytest.raises(
        dist.DistributedMismatchError, match=r"optimizer\.betas\[1\]: rank 0 has 0.999, rank 1 has 0.99"
    ):
        parallel.agree(batch_size=32, optimizer={"type": "Adam", "betas": (0.9, 0.999)})


def test_fingerprint_covers_every_element() -> None:
    xt, yt, _, _ = digits_with_index()
    x_fp, y_fp = dist_fingerprint(xt), dist_fingerprint(yt)
    for which, (x, y) in (("x", one_element_changed(xt, yt, "x")), ("y", one_element_changed(xt, yt, "y"))):
        assert (dist_fingerprint(x) != x_fp) == (which == "x")
        assert (dist_fingerprint(y) != y_fp) == (which == "y")
    assert dist_fingerprint(np.asfortranarray(xt)) == x_fp  # the values, whatever the layout
    assert dist_fingerprint(xt.astype(np.float32)) != dist_fingerprint(xt)
    assert dist_fingerprint(xt.reshape(-1)) != x_fp  # the shape counts
    assert dist_fingerprint(np.arange(0.0, 4.0)[:, None]) != dist_fingerprint(
        np.arange(0.0, 4.0)[:, None][[0, 1, 3, 2]]
    )


class Recording(dist.Communicator):
    """A lone process that keeps what its fit sent to the other ranks."""

    def allgather_json(self, value: Any) -> list[Any]:
        self.sent = value
        return [value]


class OneOfTwo(dist.Communicator):
    """Rank ``rank`` of two, the other rank having sent ``other`` (no MPI)."""

    def __init__(self, rank: int, other: Any) -> None:
        super().__init__()
        self.rank, self.size, self.other = rank, 2, other

    def allgather_json(self, value: Any) -> list[Any]:
        return [value, self.other] if self.rank == 0 else [self.other, value]


@pytest.mark.parametrize("which", ["x", "y"])
def test_one_differing_element_stops_the_fit_on_every_rank(which: str) -> None:
    """A rank whose data differ in one element (a row a sample of evenly spaced rows misses) is
    refused before any step, with the same error on both ranks."""
    xt, yt, _, _ = digits_with_index()
    sent = []
    for x, y in ((xt, yt), one_element_changed(xt, yt, which)):
        recording = Recording()
        make_trainer("float32", distributed=recording).fit(x, y, epochs=1, batch_size=600)
        sent.append(recording.sent)
    for rank in (0, 1):
        trainer = make_trainer("float32", distributed=OneOfTwo(rank, sent[1 - rank]))
        before = weights(trainer)
        with pytest.raises(dist.DistributedMismatchError, match=rf"ranks disagree on data\.{which}: rank 0 has "):
            trainer.fit(*((xt, yt) if rank == 0 else one_element_changed(xt, yt, which)), epochs=1, batch_size=600)
        np.testing.assert_array_equal(weights(trainer), before)


def test_nccl_calls_are_made_in_place_on_the_current_stream() -> None:
    calls = []
    nccl = types.SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_INT64=4, NCCL_SUM=0, NCCL_MAX=2)
    nccl.NCCL_FLOAT16, nccl.NCCL_INT32, nccl.NCCL_MIN = 6, 2, 3
    comm = types.SimpleNamespace(
        allReduce=lambda *a: calls.append(("allReduce", *a)), broadcast=lambda *a: calls.append(("broadcast", *a))
    )
    link = dist._NcclLink(nccl, comm, stream=lambda: 1234)
    array = types.SimpleNamespace(
        data=types.SimpleNamespace(ptr=5000),
        size=10,
        dtype=np.dtype("float32"),
        flags=types.SimpleNamespace(c_contiguous=True),
    )
    link.allreduce(array, "sum")
    array.dtype = np.dtype("float64")
    link.broadcast(array, 0)
    assert calls == [("allReduce", 5000, 5000, 10, 7, 0, 1234), ("broadcast", 5000, 5000, 10, 8, 0, 1234)]
    array.dtype = np.dtype("complex64")
    with pytest.raises(TypeError, match="NCCL cannot reduce dtype complex64"):
        link.allreduce(array, "sum")


def test_nccl_unique_id_in_either_cupy_form() -> None:
    uid = bytes(range(128))
    signed = tuple(np.frombuffer(uid, dtype=np.int8).tolist())  # CuPy < 14 hands out signed chars
    assert dist._uid_bytes(uid) == uid and dist._uid_bytes(signed) == uid
    made = []

    def old_style(size: int, commid: Any, rank: int) -> str:
        if not isinstance(commid, tuple):
            raise TypeError("expected tuple")
        made.append(commid)
        return "ok"

    assert dist._nccl_communicator(types.SimpleNamespace(NcclCommunicator=old_style), 1, uid, 0) == "ok"
    assert made == [signed]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nccl_one_rank_equals_plain_training(gpu: gn.Device, dtype: str) -> None:
    """ci/gpu-check's NCCL step: the NCCL path with one rank (no mpi4py needed) trains the
    weights plain training does."""
    nccl, why_not = dist._load_nccl()
    if nccl is None:
        pytest.skip(f"NCCL is not usable here: {why_not}")
    plain = make_trainer(dtype, distributed=False, device=str(gpu))
    fit(plain, dtype)
    comm = dist.Communicator(nccl=True)
    lone = make_trainer(dtype, distributed=comm, device=str(gpu))
    fit(lone, dtype)
    assert comm.transport(gpu) == "nccl"
    assert relative(weights(lone), weights(plain)) < (1e-10 if dtype == "float64" else 1e-5)
    probe = gpu.send(np.arange(6, dtype=dtype))
    comm.allreduce(probe)
    comm.broadcast(probe)
    np.testing.assert_array_equal(gn.to_numpy(probe), np.arange(6))


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
