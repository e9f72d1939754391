"""The AdEx kernel's bit-level contracts: traces equal those of emulator 1.0, whatever the batching,
and the vectorised step's exp and noise and the splitmix64 helpers equal what they replace.

tests/test_emulator.py checks the physics against a numpy Euler integrator; this file checks that
speed work on the kernel changed no bit of a store.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from numba.core import types
from numba.extending import intrinsic

from farm.defaults import ChipModel, Protocol
from farm.kernel import rng, simd_step
from farm.kernel.expm import TABLE
from farm.substrates.emulator import EmulatorSubstrate

# sha256 of (trace, spike_times, spike_count) for the rows of _rows(), computed with the
# one-neuron-at-a-time kernel and libm exp of EMULATOR_VERSION 1.0 (commit 65352dc). A store
# written by any later kernel of that version must reproduce it bit for bit.
_DIGEST_V1_0 = "ae26757dbaaf0a3a1853840720b62482369752357dc1a5bbaf0eb1ba9f1c62c5"


def _rows(n: int = 45) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """theta over the whole CapMem range (silent to bursting), spread over chips and neurons."""
    idx = np.arange(n)
    theta = (rng.uniforms(rng.stream_keys(11, idx, rng.STREAM_THETA), 0, 7) * 1022).astype(
        np.float32
    )
    chip = (idx % 4).astype(np.int16)
    neuron = (idx * 37 % 512).astype(np.int16)
    return theta, chip, neuron, rng.stream_keys(11, idx, rng.STREAM_NOISE)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_traces_equal_emulator_1_0_bit_for_bit() -> None:
    r = EmulatorSubstrate(Protocol(), ChipModel()).run(*_rows())
    assert 5 <= int((r.spike_count > 0).sum()) < 45, "rows should mix silent and spiking neurons"
    assert _digest(r.trace, r.spike_times, r.spike_count) == _DIGEST_V1_0


def test_kernel_cache_key_follows_the_sources_compiled_into_it() -> None:
    """Numba's cache of farm/kernel/adex.py's kernels is keyed by adex.py alone.

    The code it inlines lives in three other files. Their hash sits in adex.py, so editing them
    forces a change there too."""
    from farm.kernel import adex

    root = Path(adex.__file__).parent
    h = hashlib.sha256()
    for name in ("simd_step.py", "expm.py", "rng.py"):
        h.update((root / name).read_bytes())
    assert adex.INLINED_SOURCES_SHA256 == h.hexdigest(), (
        "farm/kernel/simd_step.py, expm.py or rng.py changed: "
        f"set INLINED_SOURCES_SHA256 in farm/kernel/adex.py to {h.hexdigest()!r} "
        "(that edit makes numba recompile the kernel instead of loading a stale one)"
    )


def test_row_independent_of_batch_position_size_and_threads() -> None:
    """Rows are interleaved several per thread; a row's result must not depend on its neighbours."""
    theta, chip, neuron, keys = _rows(23)  # not a multiple of the interleaving width
    sub = EmulatorSubstrate(Protocol(), ChipModel())
    full = sub.run(theta, chip, neuron, keys)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = sub.run(theta, chip, neuron, keys)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(full.trace, one_thread.trace)
    for lo, hi in ((0, 1), (5, 6), (3, 14), (9, 23)):
        part = sub.run(theta[lo:hi], chip[lo:hi], neuron[lo:hi], keys[lo:hi])
        assert np.array_equal(part.trace, full.trace[lo:hi]), f"rows {lo}:{hi}"
        assert np.array_equal(part.spike_times, full.spike_times[lo:hi], equal_nan=True)
        assert np.array_equal(part.spike_count, full.spike_count[lo:hi])


@intrinsic
def _lanes_of(typingctx, x, table, exp_out, noise_out):  # type: ignore[no-untyped-def]
    """farm.kernel.simd_step's vector exp of x[:LANES], and its vector noise of x's uint64 bits."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ptrs = [
            context.make_array(ty)(context, builder, a).data for ty, a in zip(signature.args, args)
        ]
        xv = builder.load(builder.bitcast(ptrs[0], simd_step._vf.as_pointer()), align=8)
        bits = builder.bitcast(xv, simd_step._vi)
        builder.store(
            simd_step._exp(builder, xv, ptrs[1]),
            builder.bitcast(ptrs[2], simd_step._vf.as_pointer()),
            align=8,
        )
        noise = simd_step._normal_fast(builder, simd_step._mix64(builder, bits))
        builder.store(noise, builder.bitcast(ptrs[3], simd_step._vf.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.void(x, table, exp_out, noise_out), codegen


@numba.njit(cache=True)
def _vector_and_scalar(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vector exp, libm exp, vector noise, scalar noise) of x; x.size a multiple of LANES."""
    lanes = simd_step.LANES
    ours, libm, noise, scalar_noise = (
        np.empty_like(x),
        np.empty_like(x),
        np.empty_like(x),
        np.empty_like(x),
    )
    bits = x.view(np.uint64)
    for i in range(0, x.size, lanes):
        _lanes_of(x[i : i + lanes], TABLE, ours[i : i + lanes], noise[i : i + lanes])
    for i in range(x.size):
        libm[i] = math.exp(x[i])
        scalar_noise[i] = rng.to_normal_fast(rng.mix64(bits[i]))
    return ours, libm, noise, scalar_noise


def test_vector_step_parts_equal_their_scalar_definitions_bitwise() -> None:
    """The SIMD step's exp is glibc's on the kernel's argument range |x| <= 30 (tiny |x| included,
    where glibc takes a special case), and its noise is farm.kernel.rng's, lane by lane."""
    g = np.random.default_rng(1)
    x = np.concatenate(
        [
            g.uniform(-30.0, 30.0, 2_000_000),  # the kernel's range of exp arguments
            g.uniform(-1e-3, 1e-3, 100_000),
            np.arange(-30 * 128, 30 * 128 + 1) * (math.log(2) / 128),
            [0.0, -0.0, 5e-17, -5e-17, 2.0**-54, -(2.0**-54), 1e-300, -1e-300, 30.0, -30.0],
        ]
    )
    x = np.concatenate([x, np.zeros(-x.size % simd_step.LANES)])
    ours, libm, noise, scalar_noise = _vector_and_scalar(x)
    assert np.array_equal(ours.view(np.uint64), libm.view(np.uint64))
    assert np.array_equal(noise, scalar_noise)


def test_traces_identical_on_a_cpu_without_avx_or_fma(tmp_path: Path) -> None:
    """The digest again, compiled for baseline x86-64 (SSE2: the vector step splits into 2-wide
    ops, fma becomes libm's exact fma): stores do not depend on the host's instruction set."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the generic target named here is x86-64's")
    code = (
        "from tests.test_kernel import _rows, _digest\n"
        "from farm.defaults import ChipModel, Protocol\n"
        "from farm.substrates.emulator import EmulatorSubstrate\n"
        "r = EmulatorSubstrate(Protocol(), ChipModel()).run(*_rows())\n"
        "print(_digest(r.trace, r.spike_times, r.spike_count))\n"
    )
    env = {
        **os.environ,
        "NUMBA_CPU_NAME": "generic",
        "NUMBA_CPU_FEATURES": "",
        "NUMBA_CACHE_DIR": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[-1] == _DIGEST_V1_0


def test_splitmix64_np_matches_mix64_and_published_values() -> None:
    # splitmix64 seeded with 0 yields 0xE220A8397B1DCDAF first (Vigna's reference implementation).
    assert rng.splitmix64_np(np.array([0], dtype=np.uint64))[0] == np.uint64(0xE220A8397B1DCDAF)
    x = np.concatenate(
        [
            np.arange(1000, dtype=np.uint64),
            np.array([2**64 - 1, 2**63, 0x9E3779B97F4A7C15], dtype=np.uint64),
        ]
    )
    got = rng.splitmix64_np(x)
    assert got.dtype == np.uint64 and got.shape == x.shape
    assert all(got[k] == rng.mix64(x[k]) for k in range(x.size))


def test_to_normal_fast_equals_float_sum_of_16_bit_parts() -> None:
    h = rng.splitmix64_np(np.arange(100_000, dtype=np.uint64))
    parts = [((h >> np.uint64(s)) & np.uint64(0xFFFF)).astype(np.float64) for s in (0, 16, 32, 48)]
    expected = ((parts[0] + parts[1] + parts[2] + parts[3]) / 65536.0 - 2.0) * 1.7320508075688772
    got = np.array([rng.to_normal_fast(v) for v in h[:20_000]])
    assert np.array_equal(got, expected[:20_000])
