"""Every accelerated Ops against the reference: the cases of ``gpunn check`` (gpunn/cli/check_cases.py),
parametrized over every backend available here. On the CPU (NumbaOps) the promise is the
reference's bits; on a GPU (CupyOps, and the reference on CuPy against the reference on NumPy)
a bound in the terms' magnitude per output. Then: the check itself fails on an Ops that is a
little wrong, and a fused-multiply-add-like rounding passes the GPU's bound but not the CPU's."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn as gn
from gpunn.backend.device import CPU
from gpunn.backend.ops import NumpyOps
from gpunn.cli import check

# gn.available_devices() at collection is the real machine's (the simulated GPU starts per test)
BACKENDS = check.backends(gn.available_devices())
CASES = check.cases()


def _params() -> list:
    params = [
        pytest.param(b, c, id=f"{b.name}-{c.id}", marks=[pytest.mark.gpu] if b.device.kind == "cuda" else [])
        for b in BACKENDS
        for c in CASES
        if c.op in b.methods()
    ]
    return params or [pytest.param(None, None, id="no-overrides")]


@pytest.mark.parametrize(("backend", "case"), _params())
def test_override_conforms_to_the_reference(backend: check.Backend | None, case: check.Case | None) -> None:
    if backend is None:
        pytest.skip(f"no Ops here overrides the reference: {[b.name for b in BACKENDS] or 'no Numba, no usable GPU'}")
    outcome = check.run_case(backend, case)
    assert outcome.ok, outcome.describe()


def test_cases_cover_the_protocol_dtypes_sizes_and_edges() -> None:
    ids = {c.id for c in CASES}
    for op in check.PROTOCOL:
        for dtype in check.DTYPES:
            assert f"{op}-{dtype}-{'relu-' if 'activation' in op else ''}edge" in ids
    assert {"adam_update-float32-adamw-l2-l1-clip-n8481", "momentum_update-float64-nesterov-n7"} <= ids
    assert {"bias_activation-float64-tanh-33x257", "activation_backward-float32-sigmoid-0x3"} <= ids
    edge = next(c for c in CASES if c.id == "adam_update-float32-edge").arrays
    for values in (edge["p"], edge["g"], edge["m"]):
        assert np.isnan(values).any() and np.isposinf(values).any() and np.isneginf(values).any()
        assert (np.signbit(values) & (values == 0)).any() and (values.view(np.uint32) == 1).any()


# ----------------------------------------------------------------------------- the check can fail


class OneUlpUp(NumpyOps):
    """sgd_update one representable value above the reference's result."""

    name = "one-ulp-up"

    def sgd_update(self, p, g, **kwargs):
        super().sgd_update(p, g, **kwargs)
        np.nextafter(p, np.inf, out=p)


class RoundsOnce(NumpyOps):
    """sgd_update as a fused multiply-add computes it: p − lr·g rounded once (plain cases only)."""

    name = "rounds-once"

    def sgd_update(self, p, g, *, lr, **kwargs):
        if kwargs:
            return super().sgd_update(p, g, lr=lr, **kwargs)
        p[...] = p.astype(np.float64) - float(p.dtype.type(lr)) * g.astype(np.float64)
        return None


class WrongRate(NumpyOps):
    """sgd_update with the learning rate off by one part in a thousand."""

    name = "wrong-rate"

    def sgd_update(self, p, g, *, lr, **kwargs):
        return super().sgd_update(p, g, lr=lr * 1.001, **kwargs)


class WritesItsGradient(NumpyOps):
    """sgd_update right in p, but it scales g, which it should only read."""

    name = "writes-g"

    def sgd_update(self, p, g, **kwargs):
        super().sgd_update(p, g, **kwargs)
        g *= 0.5


SGD = [c for c in CASES if c.op == "sgd_update"]
PLAIN_SGD = [c for c in SGD if c.label in ("n7", "n8481")]


def report(ops: NumpyOps, bitwise: bool, cases: list[check.Case]) -> dict:
    return check.check([check.Backend(ops.name, ops, CPU, NumpyOps(np), CPU, bitwise)], cases)


def test_one_ulp_fails_the_cpu_check_and_passes_the_gpu_bound() -> None:
    bits = report(OneUlpUp(np), True, SGD)
    assert not bits["ok"] and [r["ok"] for r in bits["rows"]] == [False, False]
    assert bits["rows"][0]["max_error_ulps"] == 1.0 and bits["rows"][0]["worst_case"].endswith(": p")
    text = check.format_report(bits)
    assert "one-ulp-up cpu            sgd_update             float32          1      0 (bits)  FAIL" in text
    assert text.splitlines()[-1] == "gpunn check: FAIL: 2 of 2 rows differ from the reference beyond their bound"
    bound = report(OneUlpUp(np), False, PLAIN_SGD)
    assert bound["ok"], check.format_report(bound)  # 1 ulp of p is within 2 ulps of |p| + lr·|g|


def test_a_fused_rounding_passes_only_the_bound_a_wrong_rate_or_a_written_input_neither() -> None:
    assert not report(RoundsOnce(np), True, PLAIN_SGD)["rows"][0]["ok"]  # float32: some bits differ
    assert report(RoundsOnce(np), False, PLAIN_SGD)["ok"]
    for bitwise in (True, False):
        wrong = report(WrongRate(np), bitwise, PLAIN_SGD)
        assert not any(r["ok"] for r in wrong["rows"]), check.format_report(wrong)
    written = report(WritesItsGradient(np), False, PLAIN_SGD)
    assert [r["worst_case"].split(": ")[1] for r in written["rows"]] == ["g", "g"]
    assert not any(r["ok"] or r["bound_ulps"] for r in written["rows"])  # read only: must come out unchanged


def test_error_measures() -> None:
    x = np.array([1.0, -0.0, np.nan, np.inf], dtype=np.float32)
    assert check.error(x, x.copy(), True, "float32") == 0.0
    assert check.error(x, np.array([1.0, 0.0, np.nan, np.inf], np.float32), True, "float32") == 1.0  # ±0
    assert check.error(x, np.array([1.0, -0.0, 1.0, np.inf], np.float32), True, "float32") == math.inf
    nan = np.array([np.nan], np.float32)
    assert check.error(nan, -nan, True, "float32") == 0.0  # NaN payloads and signs aside
    terms = np.array([2.0, 1.0, 1.0, 1.0])
    near = np.array([1.0 + 2 * 2.0**-23, -0.0, np.nan, np.inf], np.float32)
    assert check.error(near, x, False, "float32", terms) == pytest.approx(1.0)  # 2⁻²² is 1 ulp of terms 2
    assert check.error(np.array([np.inf]), np.array([1e308]), False, "float64", 1.0) == math.inf


def test_only_the_reference_present_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check, "backends", lambda devices: [])
    assert check.command([CPU]) == 0
    assert "only the reference Ops are present" in capsys.readouterr().out
