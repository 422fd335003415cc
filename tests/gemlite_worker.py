"""gemlite's Triton kernels on CPU, under the Triton interpreter (TRITON_INTERPRET=1):
the worker of tests/test_gemlite_interpreter.py (run as a script, writes JSON).

For each bit width gemlite serves (1, 2, 4, 8): quantize one small linear layer with
autoq's HQQ method on the CPU (axis=1, group 64, scale/zero in fp16), serve it with
autoq's own conversion (`prepare_(qm, "gemlite")`: autoq.serve.gemlite.convert, i.e.

    A16Wn(device=str(layer.W_q.device), dtype=layer.compute_dtype).from_hqqlinear(layer, del_orig=False)

) and run its forward in the interpreter, compared with HQQ's dequantized matmul
(x @ layer.dequantize().T + bias, in float32):

- at batch sizes 1, 8 and 64, where gemlite picks its kernel itself (get_matmul_type:
  GEMV_REVSPLITK for 1/2/4-bit and GEMV_SPLITK for 8-bit at 1, GEMM_SPLITK at 8, GEMM
  at 64), in float16 (what a GPU serves) and float32 (a tight check of the unpacking);
- with each of the five kernel families forced (forward_manual) at batch 2, in float16.

The work runs in ONE subprocess (this file run as a script): TRITON_INTERPRET=1 must be
in the environment before triton is first imported. Setting it in a fixture is not
enough: pytest has usually imported triton already (hqq imports it), and then triton's
own @jit helpers (tl.cdiv, tl.sum, ...) are compiled-mode JITFunctions, so an
interpreted gemlite kernel stops with "Cannot call @triton.jit'd outside of the scope
of a kernel". A fresh process also keeps gemlite's import-time state (a fake sm_90 GPU)
out of the test session. CUDA_VISIBLE_DEVICES is emptied there, so the run is the same
on a GPU machine.

gemlite needs a few patches on a machine without a GPU; `interpreted_gemlite()` applies
them around its import and the forwards and undoes them on exit (see its docstring).

The layer is 256 in -> 64 out: with 128 inputs, GEMM_SPLITK (batch 5..63) reads
scales/zeros past their end (a gemlite bug, see
test_known_gemlite_bug_gemm_splitk_reads_past_scales) and the interpreter then returns
NaN or garbage, depending on whatever memory follows them. Other gemlite bugs this run
shows are in KNOWN_BUGS (strict-xfail style: a fixed gemlite makes them fail).

tests/test_gemlite_interpreter.py runs this file as a script and asserts on its JSON.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
import types

BITS = (1, 2, 4, 8)
IN_FEATURES, OUT_FEATURES, GROUP = 256, 64, 64
AUTO_BATCHES = (1, 8, 64)
KERNELS = ("GEMV", "GEMV_REVSPLITK", "GEMV_SPLITK", "GEMM_SPLITK", "GEMM")
FORCED_BATCH = 2
# max |gemlite - reference| / max |reference|; seen: <= 1.5e-3 (fp16), <= 7e-7 (fp32)
REL_TOL = {"float16": 1e-2, "float32": 1e-5}
# gemlite 0.6.0.post2 bugs this run shows (not interpreter limitations): (nbits, group,
# batch) -> what goes wrong. Run as strict xfails so a gemlite that fixes them is noticed.
KNOWN_BUGS = {
    # GEMM / GEMM_SPLITK config pruners force BLOCK_SIZE_K >= 32 ("tl.dot minimum K"), but
    # the kernels load one scale/zero row per K tile, so a 16-wide group is dequantized
    # with its neighbour's scale: wrong results at batch >= 5 (8-bit: >= 3), any nbits.
    (4, 16, 8): "group 16, GEMM_SPLITK: wrong values",
    (4, 16, 64): "group 16, GEMM: wrong values",
    # GEMV_REVSPLITK (batch <= 4 for 1/2/4-bit) needs BLOCK_SIZE_K*2 <= group and
    # BLOCK_SIZE_K >= 32/nbits: no config survives for 1-bit with group < 64 or 2-bit
    # with group < 32 -> triton AutotunerError "No valid autotuner configs after pruning".
    (1, 32, 1): "1-bit group 32, GEMV_REVSPLITK: AutotunerError",
    (2, 16, 1): "2-bit group 16, GEMV_REVSPLITK: AutotunerError",
}


# ---- the patches (used in the subprocess) ---------------------------------------------
class _StandInDriver:
    """What gemlite and triton's autotuner ask of the active Triton driver (an sm_90 GPU)."""

    def __init__(self, max_shared_mem: int = 232448):  # an H100's opt-in shared memory
        props = {"max_shared_mem": max_shared_mem, "multiprocessor_count": 132,
                 "max_num_regs": 65536, "warpSize": 32}
        self.utils = types.SimpleNamespace(get_device_properties=lambda device=0: dict(props))

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")

    def get_benchmarker(self):
        def bench(kernel_call, quantiles=None, **kwargs):  # runs nothing: all configs tie
            return [1.0, 1.0, 1.0] if quantiles else 1.0
        return bench


_GPU = types.SimpleNamespace(name="triton-interpreter", major=9, minor=0,
                             multi_processor_count=132, total_memory=80 * 2**30)


def _tensor_range(patch_lang_core):
    """Wrap the interpreter's _patch_lang_core so that tl.range yields int32 Triton
    scalars, as in compiled code, instead of Python ints (tl.static_range unchanged)."""
    from triton.runtime import interpreter

    def patched(lang, scope):
        patch_lang_core(lang, scope)
        python_range = lang.range  # the interpreter's replacement: a Python range

        def tensor_range(*args, **kwargs):
            for i in python_range(*args, **kwargs):
                yield interpreter._implicit_cvt(int(i))  # an int32 scalar tl.tensor

        scope.set_attr(lang, "range", tensor_range)  # restored after each kernel launch

    return patched


@contextlib.contextmanager
def _replaced(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _interpreted(kernel) -> bool:
    """Is this @triton.jit function (under any autotune/heuristics) an interpreted one?"""
    from triton.runtime.interpreter import InterpretedFunction

    while kernel is not None and not isinstance(kernel, InterpretedFunction):
        kernel = getattr(kernel, "fn", None)
    return kernel is not None


@contextlib.contextmanager
def interpreted_gemlite():
    """Import gemlite and run its kernels on CPU in the Triton interpreter; yields gemlite.

    Patches, all undone on exit:
    1. triton.runtime.driver.active -> _StandInDriver. gemlite asks the driver for
       get_current_target().backend at import (IS_HIP) and for
       utils.get_device_properties(0)["max_shared_mem"] in the GEMM/GEMM_SPLITK config
       pruners; triton's autotuner asks for get_benchmarker() when more than one config
       survives pruning. The stand-in benchmarker runs nothing and reports equal times,
       so the autotuner keeps the first pruned config.
    2. torch.cuda.get_device_capability -> (9, 0), torch.cuda.get_device_properties -> a
       stand-in (a name with no GPU tag, so no bundled config cache loads; 132 SMs):
       gemlite calls both at import (triton_kernels/utils.py, quant_utils.py, core.py).
    3. triton.runtime.interpreter._patch_lang_core wrapped (_tensor_range): in the
       interpreter the loop variable of tl.range is a Python int, so gemm_INT_kernel
       (GEMM, batch >= 64) stops at gemm_kernels.py:417
       `k_m = (k * stride_mul).to(tl.int32)`: a Python float has no .to (in compiled
       code k is an int32 tensor). GEMM_SPLITK's `(k * SPLIT_K + pid_k) * stride_mul`
       works either way (pid_k is a tensor).
    4. gemlite.triton_kernels.gemv_kernels.fp4_mapping (one table per CUDA device, empty
       here) -> {None: the table on CPU}: gemv_forward indexes it with W_q.device.index,
       None on CPU. Only GEMV needs it, which gemlite never picks itself for A16Wn layers.
    Also restored: the Triton allocator gemlite installs at import (for TMA, unused here).
    What stays: gemlite in sys.modules, with the values it cached at import.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("TRITON_INTERPRET=1 must be set before triton is imported")
    import torch
    import triton.language as tl
    from triton.runtime import _allocation, driver, interpreter

    if not _interpreted(tl.cdiv):
        raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set")
    if "gemlite" in sys.modules:
        raise RuntimeError("gemlite was imported before interpreted_gemlite()")

    with contextlib.ExitStack() as stack:
        stack.callback(setattr, driver, "_active", driver._active)
        driver.set_active(_StandInDriver())
        stack.callback(_allocation._allocator.set, _allocation._allocator.get())
        stack.enter_context(_replaced(torch.cuda, "get_device_capability", lambda device=None: (9, 0)))
        stack.enter_context(_replaced(torch.cuda, "get_device_properties", lambda device=None: _GPU))
        stack.enter_context(_replaced(interpreter, "_patch_lang_core",
                                      _tensor_range(interpreter._patch_lang_core)))
        import gemlite
        from gemlite.triton_kernels import gemv_kernels

        assert _interpreted(gemv_kernels.gemv_INT_kernel)
        table = torch.tensor([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12],
                             dtype=torch.int8)
        stack.enter_context(_replaced(gemv_kernels, "fp4_mapping", {None: table}))
        yield gemlite


# ---- the worker (the subprocess) ------------------------------------------------------
def hqq_layer(nbits: int, group: int, dtype, seed: int, in_features: int = IN_FEATURES):
    """(a one-layer model quantized with autoq's HQQ method on the CPU, its QuantizedModel)."""
    import torch

    from autoq.quant import LayerConfig
    from autoq.quant.model import QuantizedModel

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, OUT_FEATURES, bias=True))
    qm = QuantizedModel(model)
    qm.apply({"0": LayerConfig(nbits, group)}, device=torch.device("cpu"), dtype=dtype)
    return qm


def served_by_autoq(qm):
    """autoq's own conversion: the quantized model served by the gemlite backend."""
    from autoq.serve.backend import prepare_

    report = prepare_(qm, "gemlite")
    assert report["served_layers"] == 1, report
    return qm.model[0]


def run_case(gemlite, nbits: int, group: int, dtype_name: str, batch: int, kernel: str | None):
    import torch

    dtype = getattr(torch, dtype_name)
    row = {"nbits": nbits, "group": group, "dtype": dtype_name, "batch": batch,
           "forced": kernel, "kernel": kernel or gemlite.core.get_matmul_type(batch, nbits)}
    start = time.perf_counter()
    try:
        qm = hqq_layer(nbits, group, dtype, seed=nbits)
        layer = qm.installed["0"]
        weight = layer.dequantize().float()
        if (nbits, group, batch) in KNOWN_BUGS:  # outside autoq's rules: gemlite itself
            from autoq.serve.gemlite import convert
            served = convert(layer)
        else:
            served = served_by_autoq(qm)
        row["hqq_intact"] = bool(torch.equal(layer.dequantize().float(), weight))
        x = torch.randn(1, batch, IN_FEATURES, generator=torch.Generator().manual_seed(batch)).to(dtype)
        ref = x.float() @ weight.T + layer.bias.float()
        kernel_module = getattr(served, "kernel", served)   # autoq's Served wraps gemlite's
        y = served(x) if kernel is None else kernel_module.forward_manual(x, kernel)
        err = (y.float() - ref).abs().max().item()
        row.update(ok=True, shape=list(y.shape), out_dtype=str(y.dtype).replace("torch.", ""),
                   max_abs=err, rel=err / ref.abs().max().item(), finite=bool(y.isfinite().all()))
    except Exception as e:  # noqa: BLE001 - recorded, asserted by the test
        deepest = e.__cause__ or e  # an InterpreterError's cause holds the kernel's frame
        frames = [f for f in traceback.extract_tb(deepest.__traceback__) if "gemlite" in f.filename]
        where = f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}" if frames else ""
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}", where=where)
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def run_overread_case(gemlite):
    """GEMM_SPLITK on a 128-input layer (group 64, batch 8: SPLIT_K 4 x BLOCK_SIZE_K 64 >
    128): the same scales/zeros, followed in memory by NaN, then by zeros."""
    import torch

    from autoq.serve.gemlite import convert

    layer = hqq_layer(4, 64, torch.float16, seed=0, in_features=128).installed["0"]
    served = convert(layer)
    x = torch.randn(8, 128, generator=torch.Generator().manual_seed(0)).half()
    ref = x.float() @ layer.dequantize().float().T + layer.bias.float()
    row = {"kernel": gemlite.core.get_matmul_type(8, 4)}
    for fill in ("nan", "zero"):
        for name in ("scales", "zeros"):
            t = getattr(served, name).data
            value = float("nan") if fill == "nan" else 0.0
            buf = torch.full((3 * t.shape[0], t.shape[1]), value, dtype=t.dtype)
            buf[:t.shape[0]] = t
            setattr(served, name, torch.nn.Parameter(buf[:t.shape[0]], requires_grad=False))
        y = served(x).float()
        row[f"{fill}_after"] = {"nan": int(y.isnan().sum()), "outputs": y.numel(),
                                "max_abs": float((y - ref).abs().nan_to_num(0).max())}
    return row


def cases():
    for nbits in BITS:
        for dtype in ("float16", "float32"):
            for batch in AUTO_BATCHES:
                yield nbits, GROUP, dtype, batch, None
        for kernel in KERNELS:
            yield nbits, GROUP, "float16", FORCED_BATCH, kernel
    for nbits, group, batch in KNOWN_BUGS:
        yield nbits, group, "float16", batch, None


def worker(out_path: str) -> None:
    start = time.perf_counter()
    with interpreted_gemlite() as gemlite:
        import_s = time.perf_counter() - start
        rows = [run_case(gemlite, *case) for case in cases()]
        overread = run_overread_case(gemlite)
    with open(out_path, "w") as f:
        json.dump({"import_seconds": round(import_s, 3), "overread": overread,
                   "seconds": round(time.perf_counter() - start, 3), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    worker(sys.argv[1])
