"""One Euler step of ``LANES`` AdEx neurons as explicit SIMD: the kernel's hot loop, in LLVM IR.

Why hand-written IR: LLVM did not vectorise the lane loop by itself, whether written over lane
arrays or over one scalar variable per lane (the assembly stayed scalar; likely the noise hash's
64-bit multiplies, which AVX2 lacks, and the exp's table lookups), so the step ran as 8 interleaved
scalar chains. Here every lane's float operation is the very IEEE operation of farm.kernel.adex's
scalar formulation, in the same order (no fast-math, FMA only where glibc's exp has one), so a
row's trace is bit-identical to emulator 1.0's; tests/test_kernel.py pins it by digest. On AVX2 a
<LANES x double> op is LANES/4 instructions; without AVX, LLVM splits it further, same bits.

Per step and lane (see farm/kernel/adex.py for the equations)::

    dw    = dt/tau_w * (a (v - v_leak) - w)
    arg   = min((v - v_t) / delta_t, 30)
    I_exp = g_leak delta_t exp(max(arg, -30))  if arg > -30 else 0
    v'    = v + dt/C (-g_leak (v - v_leak) + I_exp - w + I) [+ sigma N(key, step)]
    v     = v_reset if refractory else v';  refractory counter - 1;  w += dw

Spikes (v >= v_threshold) are rare: the step only reports whether any lane crossed, and the caller
resets those lanes in scalar code.

LANES = 16 (four AVX2 vectors whose chains overlap): fewer lanes run slower, and 32 gains little
while padding every small batch to 32 rows (docs/performance.md). Numba caches
farm/kernel/adex.py's kernel by adex.py's own file: editing this file means updating
``farm.kernel.adex.INLINED_SOURCES_SHA256`` (tests/test_kernel.py says so), which invalidates that
cache.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from farm.kernel import expm, rng

LANES = 16
# Rows of the ``params`` array handed to euler_step: per-lane constants, (len(PARAM_ROWS), LANES).
PARAM_ROWS = (
    "v_leak",
    "v_t",
    "inv_delta_t",
    "g_leak",
    "g_leak_delta_t",
    "dt_c",
    "a",
    "dt_tau_w",
    "v_reset",
    "v_threshold",
)
V_LEAK, V_T, INV_DELTA_T, G_LEAK, G_LEAK_DELTA_T, DT_C, A, DT_TAU_W, V_RESET, V_THRESHOLD = range(
    len(PARAM_ROWS)
)
EXP_ARG_MAX = 30.0  # exp(30) already crosses any threshold within one step; avoids overflow
EXP_ARG_MIN = (
    -30.0
)  # exp(-30) ~ 1e-13: below the rounding of v (~600 mV * 2e-16) after dt/C scaling

_f64 = ir.DoubleType()
_i64 = ir.IntType(64)
_i32 = ir.IntType(32)
_vf = ir.VectorType(_f64, LANES)
_vi = ir.VectorType(_i64, LANES)
_vi32 = ir.VectorType(_i32, LANES)


def _splat(value: float | int, ty: ir.VectorType) -> ir.Constant:
    return ir.Constant(ty, [value] * ty.count)


def _broadcast(builder: ir.IRBuilder, scalar: ir.Value, ty: ir.VectorType) -> ir.Value:
    vec = ir.Constant(ty, ir.Undefined)
    for k in range(ty.count):
        vec = builder.insert_element(vec, scalar, ir.Constant(_i32, k))
    return vec


def _fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_vf, [_vf, _vf, _vf]), f"llvm.fma.v{LANES}f64"
    )
    return builder.call(fn, [a, b, c])


def _mix64(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """farm.kernel.rng.mix64 on a vector of uint64 (wrapping arithmetic, as numba's uint64)."""
    z = builder.add(x, _splat(int(rng.GOLDEN), _vi))
    z = builder.mul(builder.xor(z, builder.lshr(z, _splat(30, _vi))), _splat(int(rng.M1), _vi))
    z = builder.mul(builder.xor(z, builder.lshr(z, _splat(27, _vi))), _splat(int(rng.M2), _vi))
    return builder.xor(z, builder.lshr(z, _splat(31, _vi)))


def _normal_fast(builder: ir.IRBuilder, h: ir.Value) -> ir.Value:
    """farm.kernel.rng.to_normal_fast on a vector.

    The four 16-bit parts sum to < 2^18, so the i32 conversion is exact.
    """
    mask = _splat(0xFFFF, _vi)
    s = builder.and_(h, mask)
    s = builder.add(s, builder.and_(builder.lshr(h, _splat(16, _vi)), mask))
    s = builder.add(s, builder.and_(builder.lshr(h, _splat(32, _vi)), mask))
    s = builder.add(s, builder.lshr(h, _splat(48, _vi)))
    f = builder.sitofp(builder.trunc(s, _vi32), _vf)
    f = builder.fsub(builder.fmul(f, _splat(rng.INV65536, _vf)), _splat(2.0, _vf))
    return builder.fmul(f, _splat(1.7320508075688772, _vf))


def _exp(builder: ir.IRBuilder, x: ir.Value, table: ir.Value) -> ir.Value:
    """glibc's exp (farm.kernel.expm's data) on a vector, same fused operations in the same order.

    Its main path only, which is exact for the kernel's |x| <= 30 (tiny |x| gives 1 + x rounded, as
    glibc's special case does)."""
    kd = _fma(builder, x, _splat(expm.INV_LN2_N, _vf), _splat(expm.SHIFT, _vf))
    ki = builder.bitcast(kd, _vi)
    kd = builder.fsub(kd, _splat(expm.SHIFT, _vf))
    r = _fma(builder, kd, _splat(expm.NEG_LN2_HI_N, _vf), x)
    r = _fma(builder, kd, _splat(expm.NEG_LN2_LO_N, _vf), r)
    idx = builder.shl(builder.and_(ki, _splat(expm.N - 1, _vi)), _splat(1, _vi))
    top = builder.shl(ki, _splat(52 - expm.TABLE_BITS, _vi))
    tail = ir.Constant(_vi, ir.Undefined)
    hi = ir.Constant(_vi, ir.Undefined)
    for k in range(LANES):
        lane = ir.Constant(_i32, k)
        i = builder.extract_element(idx, lane)
        tail = builder.insert_element(
            tail, builder.load(builder.gep(table, [i], inbounds=True), align=8), lane
        )
        hi = builder.insert_element(
            hi,
            builder.load(
                builder.gep(table, [builder.add(i, ir.Constant(_i64, 1))], inbounds=True), align=8
            ),
            lane,
        )
    tail = builder.bitcast(tail, _vf)
    scale = builder.bitcast(builder.add(hi, top), _vf)
    r2 = builder.fmul(r, r)
    p23 = _fma(builder, r, _splat(expm.C3, _vf), _splat(expm.C2, _vf))
    p45 = _fma(builder, r, _splat(expm.C5, _vf), _splat(expm.C4, _vf))
    tmp = _fma(builder, p23, r2, builder.fadd(r, tail))
    tmp = _fma(builder, builder.fmul(r2, r2), p45, tmp)
    return _fma(builder, scale, tmp, scale)


@intrinsic
def euler_step(typingctx, state, params, noise_keys, refractory, table, current, step, sigma_step):  # type: ignore[no-untyped-def]
    """Advance ``LANES`` neurons one Euler step in place; True when any lane reached its threshold.

    Args (numba types at the call):
        state: float64 (2, LANES) C array, rows v [mV] and w [nA]; updated.
        params: float64 (len(PARAM_ROWS), LANES) C array of per-lane constants, rows as PARAM_ROWS.
        noise_keys: uint64 (LANES,) mixed temporal-noise keys (``mix64(key)``).
        refractory: int64 (LANES,) steps left clamped at v_reset; decremented.
        table: farm.kernel.expm.TABLE (uint64).
        current: float64 stimulus current of this step [nA].
        step: uint64 step index (noise counter).
        sigma_step: float64 noise per step [mV] (0 disables noise).
    """
    arrays = (
        (state, types.float64),
        (params, types.float64),
        (noise_keys, types.uint64),
        (refractory, types.int64),
        (table, types.uint64),
    )
    if not all(
        isinstance(a, types.Array) and a.dtype == dtype and a.layout == "C" for a, dtype in arrays
    ):
        # the codegen reads rows of LANES contiguous elements: anything else is a typing error
        return None
    sig = types.boolean(state, params, noise_keys, refractory, table, current, step, sigma_step)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        st_ty, pa_ty, key_ty, ref_ty, tab_ty = signature.args[:5]
        st = context.make_array(st_ty)(context, builder, args[0]).data
        pa = context.make_array(pa_ty)(context, builder, args[1]).data
        keys = context.make_array(key_ty)(context, builder, args[2]).data
        refp = context.make_array(ref_ty)(context, builder, args[3]).data
        tab = context.make_array(tab_ty)(context, builder, args[4]).data
        current, step, sigma = args[5], args[6], args[7]

        def row(base: ir.Value, i: int, ty: ir.VectorType) -> ir.Value:
            ptr = builder.gep(base, [ir.Constant(_i64, i * LANES)], inbounds=True)
            return builder.bitcast(ptr, ty.as_pointer())

        def param(index: int) -> ir.Value:
            return builder.load(row(pa, index, _vf), align=8)

        v_ptr, w_ptr, ref_ptr = row(st, 0, _vf), row(st, 1, _vf), row(refp, 0, _vi)
        v = builder.load(v_ptr, align=8)
        w = builder.load(w_ptr, align=8)
        ref = builder.load(ref_ptr, align=8)
        v_leak = param(V_LEAK)
        v_minus_leak = builder.fsub(v, v_leak)
        dw = builder.fmul(param(DT_TAU_W), builder.fsub(builder.fmul(param(A), v_minus_leak), w))
        arg = builder.fmul(builder.fsub(v, param(V_T)), param(INV_DELTA_T))
        arg = builder.select(
            builder.fcmp_ordered(">", arg, _splat(EXP_ARG_MAX, _vf)), _splat(EXP_ARG_MAX, _vf), arg
        )
        above_min = builder.fcmp_ordered(">", arg, _splat(EXP_ARG_MIN, _vf))
        e = _exp(builder, builder.select(above_min, arg, _splat(EXP_ARG_MIN, _vf)), tab)
        i_exp = builder.select(above_min, builder.fmul(param(G_LEAK_DELTA_T), e), _splat(0.0, _vf))
        drive = builder.fmul(builder.fneg(param(G_LEAK)), v_minus_leak)
        drive = builder.fadd(
            builder.fsub(builder.fadd(drive, i_exp), w), _broadcast(builder, current, _vf)
        )
        v_free = builder.fadd(v, builder.fmul(param(DT_C), drive))
        counter = _broadcast(builder, step, _vi)
        keyv = builder.load(row(keys, 0, _vi), align=8)
        sigma_v = _broadcast(builder, sigma, _vf)
        noisy = builder.fadd(
            v_free,
            builder.fmul(
                sigma_v, _normal_fast(builder, _mix64(builder, builder.xor(keyv, counter)))
            ),
        )
        v_free = builder.select(builder.fcmp_ordered(">", sigma_v, _splat(0.0, _vf)), noisy, v_free)
        in_ref = builder.icmp_signed(">", ref, _splat(0, _vi))
        v_new = builder.select(in_ref, param(V_RESET), v_free)
        builder.store(v_new, v_ptr, align=8)
        builder.store(builder.fadd(w, dw), w_ptr, align=8)
        builder.store(
            builder.select(in_ref, builder.sub(ref, _splat(1, _vi)), ref), ref_ptr, align=8
        )
        fired = builder.fcmp_ordered(">=", v_new, param(V_THRESHOLD))
        bits = builder.bitcast(fired, ir.IntType(LANES))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(LANES), 0))

    return sig, codegen
