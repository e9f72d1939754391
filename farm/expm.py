"""exp(x) as glibc computes it, inlined into numba kernels: same bits, no libm call.

Why: ``math.exp`` in a numba loop is a call into libm, which spills every live float register
and serialises the AdEx kernel's per-step chain (about half of its time). This is glibc's own
algorithm (glibc >= 2.28, ARM optimized-routines: 2^(k/128) table, degree-5 polynomial) in the
exact operation order of its FMA build ``__exp_fma``, so results equal glibc's bit for bit
(tests/test_kernel.py checks against ``math.exp`` on millions of arguments). Arguments outside
the main range (|x| < 2^-54 or >= 512, NaN, inf) fall back to ``math.exp`` itself. A side effect:
the kernel's traces no longer depend on which libm variant the host selects.

Reference: Szabolcs Nagy, glibc sysdeps/ieee754/dbl-64/e_exp.c and e_exp_data.c (2018).
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal, localcontext

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_TABLE_BITS = 7
_N = 1 << _TABLE_BITS
_INV_LN2_N = float.fromhex("0x1.71547652b82fep+7")  # N / ln 2
_NEG_LN2_HI_N = float.fromhex("-0x1.62e42fefa0000p-8")  # -(ln 2 / N), high part
_NEG_LN2_LO_N = float.fromhex("-0x1.cf79abc9e3b3ap-47")  # -(ln 2 / N), low part
_C2 = float.fromhex("0x1.ffffffffffdbdp-2")
_C3 = float.fromhex("0x1.555555555543cp-3")
_C4 = float.fromhex("0x1.55555cf172b91p-5")
_C5 = float.fromhex("0x1.1111167a4d017p-7")
_SHIFT = float.fromhex("0x1.8p52")
_ABSTOP_MIN = 0x3C9  # top 12 bits of 2^-54
_ABSTOP_MAX = 0x407  # below top 12 bits of 512


def _table() -> np.ndarray:
    """glibc's __exp_data.tab: for k < N, (bits of tail_k, bits of 2^(k/N) - (k << 45)).

    2^(k/N) = H_k (1 + tail_k) with H_k the correctly rounded double; 80 decimal digits make both
    roundings exact (the test compares against libm across all table entries).
    """
    tab = np.empty(2 * _N, dtype=np.uint64)
    with localcontext() as ctx:
        ctx.prec = 80
        for k in range(_N):
            exact = Decimal(2) ** (Decimal(k) / _N)
            h = float(exact)
            tail = float((exact - Decimal(h)) / Decimal(h))
            tab[2 * k] = struct.unpack("<Q", struct.pack("<d", tail))[0]
            tab[2 * k + 1] = struct.unpack("<Q", struct.pack("<d", h))[0] - (k << (52 - _TABLE_BITS))
    return tab


_TAB = _table()


@intrinsic
def fma(typingctx, a, b, c):  # type: ignore[no-untyped-def]
    """a * b + c with one rounding (llvm.fma.f64: the FMA instruction, or libm's exact fma)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        d = ir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d, [d, d, d]), "llvm.fma.f64")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _bits(typingctx, x):  # type: ignore[no-untyped-def]
    """The IEEE-754 bit pattern of a float64 as uint64."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


@intrinsic
def _from_bits(typingctx, u):  # type: ignore[no-untyped-def]
    """The float64 whose bit pattern is the uint64 ``u``."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen


@numba.njit(cache=True, inline="always")
def exp(x: float) -> float:
    """e**x, bit-identical to glibc's ``exp`` (FMA build) for every float64 ``x``."""
    ki = _bits(x)
    abstop = (ki >> np.uint64(52)) & np.uint64(0x7FF)
    if abstop < np.uint64(_ABSTOP_MIN) or abstop > np.uint64(_ABSTOP_MAX):
        return math.exp(x)
    # x = k ln2/N + r, |r| <= ln2/2N; exp(x) = 2^(k/N) exp(r). Same fused ops, same order as glibc.
    kd = fma(x, _INV_LN2_N, _SHIFT)
    ki = _bits(kd)
    kd = kd - _SHIFT
    r = fma(kd, _NEG_LN2_HI_N, x)
    r = fma(kd, _NEG_LN2_LO_N, r)
    idx = np.int64(ki & np.uint64(_N - 1)) * 2
    top = ki << np.uint64(52 - _TABLE_BITS)
    tail = _from_bits(_TAB[idx])
    sbits = _TAB[idx + 1] + top
    r2 = r * r
    p23 = fma(r, _C3, _C2)
    p45 = fma(r, _C5, _C4)
    tmp = fma(p23, r2, r + tail)
    tmp = fma(r2 * r2, p45, tmp)
    scale = _from_bits(sbits)
    return fma(scale, tmp, scale)
