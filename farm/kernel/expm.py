"""glibc's exp data: the 2^(k/128) table and its exp polynomial, for the kernel's vectorised exp.

Why: ``math.exp`` in the AdEx kernel's step is a call into libm, which cannot run on vectors and
spilled every live float register of the per-step chain (about half of its time).
farm.kernel.simd_step evaluates glibc's own algorithm instead (glibc >= 2.28, ARM
optimized-routines: 2^(k/128) table, degree-5 polynomial) in the exact operation order of its FMA
build ``__exp_fma``, so results equal glibc's bit for bit on the kernel's argument range
(tests/test_kernel.py checks against ``math.exp``). A side effect: the kernel's traces do not
depend on which libm variant the host selects.

Reference: Szabolcs Nagy, glibc sysdeps/ieee754/dbl-64/e_exp.c and e_exp_data.c (2018).
"""

from __future__ import annotations

import struct
from decimal import Decimal, localcontext

import numpy as np

TABLE_BITS = 7
N = 1 << TABLE_BITS
INV_LN2_N = float.fromhex("0x1.71547652b82fep+7")  # N / ln 2
NEG_LN2_HI_N = float.fromhex("-0x1.62e42fefa0000p-8")  # -(ln 2 / N), high part
NEG_LN2_LO_N = float.fromhex("-0x1.cf79abc9e3b3ap-47")  # -(ln 2 / N), low part
C2 = float.fromhex("0x1.ffffffffffdbdp-2")
C3 = float.fromhex("0x1.555555555543cp-3")
C4 = float.fromhex("0x1.55555cf172b91p-5")
C5 = float.fromhex("0x1.1111167a4d017p-7")
SHIFT = float.fromhex("0x1.8p52")


def _table() -> np.ndarray:
    """glibc's __exp_data.tab: for k < N, (bits of tail_k, bits of 2^(k/N) - (k << 45)).

    2^(k/N) = H_k (1 + tail_k) with H_k the correctly rounded double; 80 decimal digits make both
    roundings exact (tests/test_kernel.py compares the vectorised exp with libm at every table
    entry).
    """
    tab = np.empty(2 * N, dtype=np.uint64)
    with localcontext() as ctx:
        ctx.prec = 80
        for k in range(N):
            exact = Decimal(2) ** (Decimal(k) / N)
            h = float(exact)
            tail = float((exact - Decimal(h)) / Decimal(h))
            tab[2 * k] = struct.unpack("<Q", struct.pack("<d", tail))[0]
            tab[2 * k + 1] = struct.unpack("<Q", struct.pack("<d", h))[0] - (k << (52 - TABLE_BITS))
    return tab


TABLE = _table()
