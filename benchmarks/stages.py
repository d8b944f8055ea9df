"""Where the time of one VLM call goes, and how much memory it takes, measured inside the call itself.

Timing each stage in a separate call (tower alone, LLM alone) would miss what a real call adds in
between; instead :class:`StageClock` hooks the modules of ONE end-to-end call - vision tower,
projector, LLM, and the selector's ``select`` - so the time to first token and its breakdown come
from the same run. :func:`peak_memory` is the call's peak on top of what was live before it (CUDA:
the allocator's counters; CPU: the process's resident-set high-water mark, reset through
``/proc/self/clear_refs`` after returning freed heap to the system). :func:`cache_bytes` is the
exact size of a returned KV cache.
"""

from __future__ import annotations

import ctypes
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .timing import synchronize

STAGES = ("vision tower", "selector", "projector", "LLM")


def vlm_parts(model: Any) -> dict[str, list[torch.nn.Module]]:
    """The modules of each stage of a ``transformers`` VLM (LLaVA-style, Gemma 3, Qwen-VL).

    Qwen keeps its projector (``merger``, deepstack mergers) inside ``visual``: those are listed as
    the projector, and :class:`StageClock` subtracts them from the tower.
    """
    inner = model.model
    tower = next(getattr(inner, name) for name in ("vision_tower", "visual") if hasattr(inner, name))
    if hasattr(inner, "multi_modal_projector"):
        projector = [inner.multi_modal_projector]
    else:
        projector = [tower.merger, *getattr(tower, "deepstack_merger_list", [])]
    return {"vision tower": [tower], "projector": projector, "LLM": [inner.language_model]}


class StageClock:
    """Seconds spent in each stage during the calls made while it is attached.

    Forward hooks time modules; the selector's ``select`` method is wrapped. Nested stages (a
    projector inside the tower) are subtracted from the enclosing one, so the stages add up.
    """

    def __init__(self, model: Any, selector: Any | None, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.parts = vlm_parts(model)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.calls = dict.fromkeys(STAGES, 0)
        self.llm_calls: list[float] = []  # each LLM forward: the first is the prefill, the rest decode steps
        self._handles: list[Any] = []
        self._open: dict[int, float] = {}
        self._selector = selector
        self._tower = self.parts["vision tower"][0]
        nested = {id(m) for m in self.parts["projector"] if any(m is sub for sub in self._tower.modules())}
        self._nested_projector = bool(nested)
        for stage, modules in self.parts.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(self._start))
                self._handles.append(module.register_forward_hook(lambda m, args, out, stage=stage: self._stop(m, stage)))
        if selector is not None:
            original = selector.select

            def timed_select(*args: Any, **kwargs: Any) -> Any:
                synchronize(self.device)
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    synchronize(self.device)
                    self.seconds["selector"] += time.perf_counter() - started
                    self.calls["selector"] += 1

            selector.select = timed_select

    def _start(self, module: torch.nn.Module, *_: Any) -> None:
        synchronize(self.device)
        self._open[id(module)] = time.perf_counter()

    def _stop(self, module: torch.nn.Module, stage: str) -> None:
        synchronize(self.device)
        started = self._open.pop(id(module), None)
        if started is not None:
            elapsed = time.perf_counter() - started
            self.seconds[stage] += elapsed
            self.calls[stage] += 1
            if stage == "LLM":
                self.llm_calls.append(elapsed)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.calls = dict.fromkeys(STAGES, 0)
        self.llm_calls = []

    def read(self) -> dict[str, float]:
        """Seconds per stage since the last reset (tower without a nested projector)."""
        out = dict(self.seconds)
        if self._nested_projector:
            out["vision tower"] -= out["projector"]
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._selector is not None and "select" in vars(self._selector):
            del self._selector.select


# ------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_cpu_peak() -> int:
    """Return freed heap to the OS, reset the resident-set high-water mark, and return the RSS in bytes."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the peak then also counts memory the allocator kept
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return 1024 * _status_kib("VmRSS")


def cpu_peak_supported() -> bool:
    try:
        _reset_cpu_peak()
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: str | torch.device) -> tuple[Any, int | None]:
    """``fn()``'s result and its peak bytes on top of what was live before (``None`` when unmeasurable)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    try:
        before = _reset_cpu_peak()
    except OSError:
        return fn(), None
    result = fn()
    return result, max(0, 1024 * _status_kib("VmHWM") - before)


def output_cache(output: Any) -> Any:
    """The KV cache a forward or ``generate`` returned (``cache`` since transformers 5; ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        if name in output:  # a ModelOutput lists only the fields that were set
            return output[name]
    return None


def cache_bytes(cache: Any) -> int:
    """Bytes held by a ``transformers`` KV cache (every layer's keys and values, and any other state)."""
    if cache is None:
        return 0
    total = 0
    for layer in getattr(cache, "layers", []):
        for value in vars(layer).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


@contextmanager
def attached(model: Any, selector: Any | None, device: str | torch.device) -> Iterator[StageClock]:
    clock = StageClock(model, selector, device)
    try:
        yield clock
    finally:
        clock.remove()
