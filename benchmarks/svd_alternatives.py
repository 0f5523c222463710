"""What else was tried for the mixed route's eigensolver on a 2-core AVX2 machine, and why it lost.

The mixed route (``vindex_hub.numerics.svd``) spends most of an expert in LAPACK ``ssyevr`` on the
float32 Gram matrix, and most of that in the tridiagonal reduction ``ssytrd``, half of whose
flops are memory-bound ``ssymv`` (``bench_svd.py`` prints the breakdown). This script measures,
in one run on one FP4-like 2048 x 4096 expert (one BLAS thread), the replacements that could
have avoided that step:

* block Krylov (block Lanczos with full reorthogonalization) on the float32 Gram matrix: the
  largest angle between the top-K Ritz subspace and the exact top-K vectors after ``m`` basis
  vectors. The route needs 3e-5 radians; on a flat MoE spectrum (eigenvalue K-1 / eigenvalue 0
  near 0.5, eigenvalue K+31 near 0.46) the angle only halves per block step;
* the two-stage reduction: dense -> band (``ssytrd_sy2sb``, all BLAS-3) then band ->
  tridiagonal (``ssytrd_sb2st``), both called through ctypes (scipy wraps neither, and LAPACK has
  no eigenvector path after them), or the band eigensolver ``ssbevx`` for the top K+32 pairs,
  with and without vectors;
* torch's CPU ``eigh`` (full spectrum, float32; a second LAPACK, which the route avoids anyway);
* a larger block size for ``ssytrd`` (LAPACK's is 32, not settable): the rate of its trailing
  update ``ssyr2k`` at rank 2 x 32 against 2 x 128, the most a custom blocked driver could gain;
* with ``--lapack LIB`` (repeatable), the same ``ssytrd`` and ``ssyevr`` from another LAPACK
  shared library through ctypes, e.g. Intel MKL (``libmkl_rt.so.3`` of the ``mkl`` wheel) or a
  newer OpenBLAS (``libscipy_openblas.so`` of the ``scipy-openblas32`` wheel): whether a
  different library's tridiagonal reduction would be worth binding.

Usage: ``python benchmarks/svd_alternatives.py [--repeat 3] [--lapack LIB ...]``. Run it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import time

import numpy as np
import scipy
from bench_load import timed  # median wall seconds of repeated runs
from scipy.linalg import blas, lapack
from threadpoolctl import threadpool_limits

from vindex_hub.numerics import svd
from vindex_hub.testing import synth

K = 64
P = K + svd.OVERSAMPLE


def block_krylov_angle(
    gram: np.ndarray, exact: np.ndarray, block: int, steps: int
) -> tuple[float, float]:
    """(seconds, largest sine of the angle from an exact top-K vector to the top-P Ritz subspace)."""
    n = gram.shape[0]
    t0 = time.perf_counter()
    basis = np.empty((n, block * steps), dtype=np.float32, order="F")
    image = np.empty_like(basis)
    basis[:, :block] = np.linalg.qr(
        np.random.default_rng(0).standard_normal((n, block), dtype=np.float32)
    )[0]
    for j in range(steps):
        cols = slice(j * block, (j + 1) * block)
        image[:, cols] = blas.ssymm(1.0, gram, basis[:, cols], side=0, lower=0)
        if j == steps - 1:
            break
        z = image[:, cols].copy(order="F")  # the image stays: it gives the projected matrix
        done = basis[:, : (j + 1) * block]
        for _ in range(2):  # classical Gram-Schmidt, twice
            z = blas.sgemm(
                -1.0, done, blas.sgemm(1.0, done, z, trans_a=1), beta=1.0, c=z, overwrite_c=1
            )
        basis[:, (j + 1) * block : (j + 2) * block] = np.linalg.qr(z)[0]
    projected = blas.sgemm(1.0, basis, image, trans_a=1).astype(np.float64)
    _, y = np.linalg.eigh((projected + projected.T) / 2)
    ritz = basis.astype(np.float64) @ y[:, ::-1][:, :P]
    elapsed = time.perf_counter() - t0
    q = np.linalg.qr(ritz)[0]
    sine = np.sqrt(np.maximum(0.0, 1.0 - np.sum((q.T @ exact) ** 2, axis=0)))
    return elapsed, float(sine.max())


def openblas_routine(symbol: str) -> object | None:
    """A LAPACK routine scipy does not wrap, from scipy's bundled OpenBLAS (symbols prefixed
    ``scipy_``), or None."""
    libdir = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs")
    for path in glob.glob(os.path.join(libdir, "libscipy_openblas*.so")):
        routine = getattr(ctypes.CDLL(path), f"scipy_{symbol}_", None)
        if routine is not None:
            return routine
    return None


class CtypesLapack:
    """``ssytrd`` and ``ssyevr`` of a LAPACK shared library (32-bit integers, Fortran symbols,
    plain or ``scipy_``-prefixed), on one BLAS thread."""

    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.prefix = next(p for p in ("scipy_", "") if hasattr(self.lib, f"{p}ssytrd_"))
        for setter in (
            "MKL_Set_Num_Threads",
            "scipy_openblas_set_num_threads",
            "openblas_set_num_threads",
        ):
            if hasattr(self.lib, setter):
                getattr(self.lib, setter)(1)

    def _call(self, name: str, flags: int, *args) -> None:
        """``name(*args, info)``, then the hidden lengths of its ``flags`` character arguments
        (gfortran's calling convention; other compilers ignore them)."""
        info = ctypes.c_int(0)
        getattr(self.lib, f"{self.prefix}{name}_")(
            *args, ctypes.byref(info), *[ctypes.c_size_t(1)] * flags
        )
        if info.value != 0:
            raise RuntimeError(f"{name}: info {info.value}")

    def ssytrd(self, gram: np.ndarray) -> None:
        """Tridiagonal reduction of the upper triangle, in place, with the optimal work size."""
        n = gram.shape[0]
        d, e, tau = (np.zeros(n, dtype=np.float32) for _ in range(3))
        work = np.zeros(1, dtype=np.float32)
        for query in (True, False):
            if not query:
                work = np.zeros(int(work[0]), dtype=np.float32)
            self._call(
                "ssytrd",
                1,
                b"U",
                _int(n),
                _ptr(gram),
                _int(n),
                _ptr(d),
                _ptr(e),
                _ptr(tau),
                _ptr(work),
                _int(-1 if query else len(work)),
            )

    def ssyevr(self, gram: np.ndarray, count: int) -> None:
        """The top ``count`` eigenpairs of the upper triangle (index range), as the route asks."""
        n = gram.shape[0]
        w, isuppz = np.zeros(n, dtype=np.float32), np.zeros(2 * n, dtype=np.int32)
        z = np.zeros((n, count), dtype=np.float32, order="F")
        work, iwork, found = (
            np.zeros(1, dtype=np.float32),
            np.zeros(1, dtype=np.int32),
            ctypes.c_int(0),
        )
        zero = ctypes.byref(ctypes.c_float(0.0))
        for query in (True, False):
            if not query:
                work, iwork = (
                    np.zeros(int(work[0]), dtype=np.float32),
                    np.zeros(int(iwork[0]), dtype=np.int32),
                )
            self._call(
                "ssyevr",
                3,
                b"V",
                b"I",
                b"U",
                _int(n),
                _ptr(gram),
                _int(n),
                zero,
                zero,
                _int(n - count + 1),
                _int(n),
                zero,
                ctypes.byref(found),
                _ptr(w),
                _ptr(z),
                _int(n),
                _ptr(isuppz),
                _ptr(work),
                _int(-1 if query else len(work)),
                _ptr(iwork),
                _int(-1 if query else len(iwork)),
            )


def _int(value: int):
    return ctypes.byref(ctypes.c_int(value))


def _ptr(array: np.ndarray) -> ctypes.c_void_p:
    return array.ctypes.data_as(ctypes.c_void_p)


def band_to_tridiagonal(routine, band: np.ndarray, kd: int) -> None:
    """The second stage, ``ssytrd_sb2st`` (bulge chasing, no Householder vectors kept): the
    tridiagonal matrix's diagonals, computed and dropped (only the time is wanted)."""
    n = band.shape[1]
    diagonal, off = np.zeros(n, dtype=np.float32), np.zeros(n - 1, dtype=np.float32)
    hous, work, info = np.zeros(1, dtype=np.float32), np.zeros(1, dtype=np.float32), ctypes.c_int(0)

    def call(lhous: int, lwork: int) -> None:
        ints = [ctypes.byref(ctypes.c_int(v)) for v in (n, kd, kd + 1, lhous, lwork)]
        pointers = [a.ctypes.data_as(ctypes.c_void_p) for a in (band, diagonal, off, hous, work)]
        routine(
            b"N",
            b"N",
            b"L",
            ints[0],
            ints[1],
            pointers[0],
            ints[2],
            pointers[1],
            pointers[2],
            pointers[3],
            ints[3],
            pointers[4],
            ints[4],
            ctypes.byref(info),
            ctypes.c_size_t(1),
            ctypes.c_size_t(1),
            ctypes.c_size_t(1),
        )
        if info.value != 0:
            raise RuntimeError(f"ssytrd_sb2st: info {info.value}")

    call(-1, -1)
    lhous, lwork = int(hous[0]), int(work[0])
    hous, work = (
        np.zeros(max(lhous, 1), dtype=np.float32),
        np.zeros(max(lwork, 1), dtype=np.float32),
    )
    call(lhous, lwork)


def dense_to_band(routine, gram: np.ndarray, kd: int) -> np.ndarray:
    """The band (lower storage, ``kd + 1`` rows) of ``Q^T G Q`` from ``ssytrd_sy2sb`` (G overwritten)."""
    n = gram.shape[0]
    band = np.zeros((kd + 1, n), dtype=np.float32, order="F")
    tau = np.zeros(max(n - kd, 1), dtype=np.float32)
    info = ctypes.c_int(0)
    work = np.zeros(1, dtype=np.float32)

    def call(lwork: int) -> None:
        ints = [ctypes.byref(ctypes.c_int(v)) for v in (n, kd, n, kd + 1, lwork)]
        routine(
            b"L",
            ints[0],
            ints[1],
            gram.ctypes.data_as(ctypes.c_void_p),
            ints[2],
            band.ctypes.data_as(ctypes.c_void_p),
            ints[3],
            tau.ctypes.data_as(ctypes.c_void_p),
            work.ctypes.data_as(ctypes.c_void_p),
            ints[4],
            ctypes.byref(info),
            ctypes.c_size_t(1),
        )
        if info.value != 0:
            raise RuntimeError(f"ssytrd_sy2sb: info {info.value}")

    call(-1)
    work = np.zeros(int(work[0]), dtype=np.float32)
    call(len(work))
    return band


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--lapack",
        action="append",
        default=[],
        metavar="LIB",
        help="another LAPACK shared library to time ssytrd and ssyevr from",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(1)
    w = np.ascontiguousarray(
        synth.quantize_fp4(synth.gate_matrix(rng, 2048, 4096))[2], dtype=np.float32
    )
    n = w.shape[0]
    threadpool_limits(1, user_api="blas")
    upper = np.asfortranarray(blas.ssyrk(1.0, w.T, trans=1, lower=0))
    lower = np.asfortranarray(blas.ssyrk(1.0, w.T, trans=1, lower=1))
    w64 = w.astype(np.float64)
    lam, vec = np.linalg.eigh(w64 @ w64.T)
    exact = vec[:, ::-1][:, :K]
    print(
        f"FP4-like 2048 x 4096, K = {K}, P = {P}; Gram eigenvalue {K - 1} / 0 = {lam[-K] / lam[-1]:.3f}, "
        f"{P - 1} / 0 = {lam[-P] / lam[-1]:.3f}\n"
    )

    lwork, liwork = (int(v) for v in lapack.ssyevr_lwork(n, lower=0)[:2])
    evr = timed(
        lambda: lapack.ssyevr(
            upper.copy(order="F"),
            compute_v=1,
            range="I",
            lower=0,
            il=n - P + 1,
            iu=n,
            lwork=lwork,
            liwork=liwork,
            overwrite_a=1,
        ),
        args.repeat,
    )
    trd_lwork = int(lapack.ssytrd_lwork(n, lower=0)[0])
    trd = timed(
        lambda: lapack.ssytrd(upper.copy(order="F"), lower=0, lwork=trd_lwork, overwrite_a=1),
        args.repeat,
    )
    copy = timed(lambda: upper.copy(order="F"), args.repeat)
    print("| eigensolver step (1 thread) | seconds | largest sine to the exact top-K |")
    print("| --- | ---: | ---: |")
    print(f"| ssyevr, top {P} (the route) | {evr - copy:.3f} | float32 rounding |")
    print(f"| - of which ssytrd | {trd - copy:.3f} | |")
    panels = {
        nb: np.asfortranarray(rng.standard_normal((n, nb), dtype=np.float32)) for nb in (32, 128)
    }
    for nb, panel in panels.items():
        update = (
            timed(
                lambda: blas.ssyr2k(
                    -1.0, panel, panel, beta=1.0, c=upper.copy(order="F"), overwrite_c=1
                ),
                args.repeat,
            )
            - copy
        )
        print(
            f"| ssytrd's trailing update ssyr2k, n {n}, rank 2 x {nb}: {2 * n * n * nb / update / 1e9:.0f} GFLOP/s "
            f"| {update:.4f} | |"
        )
    for block, steps in ((96, 4), (96, 6), (128, 5), (192, 4)):
        elapsed, sine = block_krylov_angle(upper, exact, block, steps)
        print(
            f"| block Krylov, block {block} x {steps} steps ({block * steps} vectors) | {elapsed:.3f} | {sine:.1e} |"
        )
    sy2sb, sb2st = openblas_routine("ssytrd_sy2sb"), openblas_routine("ssytrd_sb2st")
    if sy2sb is None or sb2st is None:
        print("| two-stage: ssytrd_sy2sb / ssytrd_sb2st not found in scipy's OpenBLAS | | |")
    else:
        for kd in (32, 64):
            to_band = (
                timed(lambda: dense_to_band(sy2sb, lower.copy(order="F"), kd), args.repeat) - copy
            )
            band = dense_to_band(sy2sb, lower.copy(order="F"), kd)
            chase = timed(lambda: band_to_tridiagonal(sb2st, band.copy(order="F"), kd), args.repeat)
            print(
                f"| two-stage, band {kd}: sy2sb {to_band:.3f} + sb2st {chase:.3f} (no vectors: LAPACK has no "
                f"path to them) | {to_band + chase:.3f} | |"
            )
            for vectors in (0, 1):
                solve = timed(
                    lambda: lapack.ssbevx(
                        band,
                        0.0,
                        0.0,
                        n - P + 1,
                        n,
                        compute_v=vectors,
                        range=2,
                        lower=1,
                        abstol=0.0,
                    ),
                    args.repeat if not vectors else 1,
                )
                what = "with" if vectors else "without"
                print(
                    f"| two-stage, band {kd}: sy2sb {to_band:.3f} + ssbevx {what} vectors {solve:.3f} "
                    f"| {to_band + solve:.3f} | |"
                )
    for path in args.lapack:
        other = CtypesLapack(path)
        other_trd = timed(lambda: other.ssytrd(upper.copy(order="F")), args.repeat) - copy
        other_evr = timed(lambda: other.ssyevr(upper.copy(order="F"), P), args.repeat) - copy
        print(f"| {os.path.basename(path)}: ssyevr, top {P} | {other_evr:.3f} | |")
        print(f"| {os.path.basename(path)}: - of which ssytrd | {other_trd:.3f} | |")
    try:
        import torch
    except ImportError:
        print("| torch.linalg.eigh: torch not installed | | |")
    else:
        torch.set_num_threads(1)
        full = torch.from_numpy(np.triu(upper) + np.triu(upper, 1).T)
        print(
            f"| torch.linalg.eigh, float32, full spectrum | {timed(lambda: torch.linalg.eigh(full), 1):.3f} | |"
        )
    print(f"\nload average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
