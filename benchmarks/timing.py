"""Thin timing helpers shared by the benchmarks, built on ``torch.utils.benchmark`` and ``torch.profiler``.

Machines are noisy, so every figure the suite reports is a ratio of two things measured side by
side: :func:`interleaved` times all candidates once per round, alternating their order from round
to round (ABBA), and the ratio is the median of the per-round ratios (:func:`paired_ratio`).

:func:`seconds` is ``torch.utils.benchmark``'s timer (``perf_counter`` after synchronising the
accelerator) driven by the standard ``timeit``, rather than ``torch.utils.benchmark.Timer`` itself:
``Timer.timeit`` runs two extra warm-up calls before every measurement (tripling the cost of the
second-long calls measured here, round after round) and runs them on ONE thread unless told
otherwise. Here the warm-up happens once, up front, on the process's own thread count.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import timeit
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch.utils.benchmark.utils.timer import timer as synced_clock


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], number: int = 1) -> float:
    """Mean seconds per call of ``fn`` over ``number`` back-to-back calls (the clock syncs CUDA; no warm-up)."""
    return timeit.Timer(stmt=fn, timer=synced_clock).timeit(number) / number


def timed(fn: Callable[[], Any], device: str | torch.device) -> tuple[float, Any]:
    """Seconds of one call of ``fn`` (the device synchronised before and after) and its result."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    rounds: int,
    number: int | Mapping[str, int] = 1,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Per-call seconds of every candidate, one sample per round, in alternating order.

    Round ``r`` runs the candidates forwards when ``r`` is even and backwards when odd, so slow
    drifts of the machine (other jobs, thermal state) hit every candidate alike.
    """
    names = list(candidates)
    counts = {name: number[name] if isinstance(number, Mapping) else number for name in names}
    if warmup:
        for name in names:
            candidates[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(1, rounds)):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(seconds(candidates[name], counts[name]))
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (samples taken in the same round)."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True)])


def spread(values: Sequence[float]) -> float:
    """Relative spread (max - min) / median of repeated samples: how noisy a figure is."""
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else 0.0


# ----------------------------------------------------------------------------------- profiling
def profile_ops(fn: Callable[[], Any], device: str | torch.device = "cpu", calls: int = 1) -> dict[str, Any]:
    """Run ``fn`` ``calls`` times under ``torch.profiler``; self time per op from ``key_averages``.

    Returns ``{"wall_ms", "ops": {name: {"self_ms", "calls"}}, "device_time": bool}``; on CUDA the
    self time is the device time (kernels), elsewhere CPU time.
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    wall = time.perf_counter() - started
    ops: dict[str, dict[str, float]] = {}
    for event in prof.key_averages():
        if device.type == "cuda":
            self_us = getattr(event, "self_device_time_total", 0.0)
        else:
            self_us = event.self_cpu_time_total
        if self_us <= 0:
            continue
        ops[event.key] = {"self_ms": self_us / 1000 / calls, "calls": event.count / calls}
    return {"wall_ms": 1000 * wall / calls, "ops": ops, "device_time": device.type == "cuda"}


def top_ops(profile: Mapping[str, Any], top: int = 8) -> dict[str, Any]:
    """The ``top`` ops by self time with their share of all profiled op time, and what it covers."""
    ops = profile["ops"]
    total = sum(op["self_ms"] for op in ops.values())
    ranked = sorted(ops.items(), key=lambda item: item[1]["self_ms"], reverse=True)[:top]
    return {
        "wall_ms": profile["wall_ms"],
        "ops_ms": total,
        # Python (interpreter, framework code) time is invisible to the op profiler: this says how
        # much of the wall time the listed ops explain at all.
        "ops_share_of_wall": total / profile["wall_ms"] if profile["wall_ms"] and not profile["device_time"] else None,
        "matmul_share": sum(op["self_ms"] for name, op in ops.items() if is_matmul(name)) / total if total else 0.0,
        "top": [
            {"op": name, "self_ms": op["self_ms"], "share": op["self_ms"] / total if total else 0.0, "calls": op["calls"]}
            for name, op in ranked
        ],
    }


def diff_ops(slow: Mapping[str, Any], fast: Mapping[str, Any], top: int = 8) -> dict[str, Any]:
    """Ops the slow variant calls MORE OFTEN than the fast one (a deterministic difference), most extra calls first.

    Self times of ops both call equally often differ only by noise, so they are left out of the list
    (they stay in the totals).
    """
    names = set(slow["ops"]) | set(fast["ops"])
    extra = {}
    for name in names:
        a = slow["ops"].get(name, {"self_ms": 0.0, "calls": 0})
        b = fast["ops"].get(name, {"self_ms": 0.0, "calls": 0})
        if a["calls"] > b["calls"]:
            extra[name] = {"extra_ms": a["self_ms"] - b["self_ms"], "extra_calls": a["calls"] - b["calls"]}
    ranked = sorted(extra.items(), key=lambda item: (item[1]["extra_calls"], item[1]["extra_ms"]), reverse=True)[:top]
    slow_ops = sum(op["self_ms"] for op in slow["ops"].values())
    fast_ops = sum(op["self_ms"] for op in fast["ops"].values())
    return {
        "wall_ms": {"slow": slow["wall_ms"], "fast": fast["wall_ms"]},
        "ops_ms": {"slow": slow_ops, "fast": fast_ops},
        "extra_wall_ms": slow["wall_ms"] - fast["wall_ms"],
        "extra_ops_ms": slow_ops - fast_ops,
        "added_ops_ms": sum(values["extra_ms"] for values in extra.values()),
        "top": [{"op": name, **values} for name, values in ranked],
    }


MATMUL_HINTS = ("mm", "matmul", "linear", "attention", "conv")


def is_matmul(op: str) -> bool:
    """Dense matmul / attention kernels (``aten::addmm``, ``aten::bmm``, SDPA, ...)."""
    return any(hint in op.lower() for hint in MATMUL_HINTS)


# ------------------------------------------------------------------------- per-layer attribution
class LayerClock:
    """Accumulates the time spent inside some modules (forward hooks) during other measurements.

    Used to split a shallow vision tower's forward into "one encoder layer" and "everything else",
    so the full-depth tower's time can be extrapolated as ``rest + depth * per_layer``.
    """

    def __init__(self, modules: Sequence[torch.nn.Module], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.total = 0.0
        self.calls = 0
        self._started: float | None = None
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post))

    def _pre(self, *_: Any) -> None:
        synchronize(self.device)
        self._started = time.perf_counter()

    def _post(self, *_: Any) -> None:
        synchronize(self.device)
        if self._started is not None:
            self.total += time.perf_counter() - self._started
            self.calls += 1
            self._started = None

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Temporarily use ``count`` intra-op threads (``None``: leave as is)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import lightning
    import transformers

    device = torch.device(device)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info
