"""Which onnxruntime execution providers the graphs run on, and the session options.

``'auto'`` tries TensorRT, then CUDA, each only when onnxruntime lists it *and* a tiny session
really runs on it (onnxruntime-gpu lists both even on a machine without a GPU and then falls
back silently); otherwise the CPU. ``'cpu'``, ``'cuda'`` and ``'tensorrt'`` ask for one; an
unusable explicit request is an error. :func:`select_providers` returns the provider list for
``InferenceSession`` and one sentence saying why, which :class:`dlp_ros.runtime.DlpRuntime`
logs once.

Install ``onnxruntime-gpu`` *or* ``onnxruntime``, never both in one environment: they share the
``onnxruntime`` module and the one installed last silently wins.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from dlp_ros.errors import ConfigError

logger = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = 'CPUExecutionProvider', 'CUDAExecutionProvider', 'TensorrtExecutionProvider'
CHOICES = ('auto', 'cpu', 'cuda', 'tensorrt')
# y = x + x on a (1, 4) float tensor (ONNX IR 7, opset 13): the probe graph
_PROBE_MODEL = base64.b64decode(
    'CAc6QQoOCgF4CgF4EgF5IgNBZGQSBXByb2JlWhMKAXgSDgoMCAESCAoCCAEKAggEYhMKAXkSDgoMCAESCAoCCAEKAggEQgQKABAN'
)
_GPU_DEVICE_GLOBS = ('nvidia[0-9]*', 'nvhost-*', 'nvgpu', 'dxg')  # desktop, Jetson, WSL


@dataclass(frozen=True)
class SessionConfig:
    """onnxruntime session options the runtime uses (see docs/runtime.md for measurements).

    threads: intra-op threads (0: onnxruntime's default, one per physical core).
    """

    threads: int = 0
    inter_threads: int = 1
    optimization: str = 'all'  # 'disable' | 'basic' | 'extended' | 'all'
    sequential: bool = True
    memory_pattern: bool = True
    spinning: bool = True  # intra-op threads spin-wait between runs (lower latency, more CPU)

    def session_options(self) -> ort.SessionOptions:
        levels = {
            'disable': ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if self.optimization not in levels:
            raise ConfigError(f'optimization must be one of {sorted(levels)}, got '
                              f'{self.optimization!r}')  # fmt: skip
        if self.threads < 0 or self.inter_threads < 0:
            raise ConfigError(f'threads must be >= 0, got {self.threads}, {self.inter_threads}')
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = self.inter_threads
        opts.graph_optimization_level = levels[self.optimization]
        opts.execution_mode = (
            ort.ExecutionMode.ORT_SEQUENTIAL if self.sequential else ort.ExecutionMode.ORT_PARALLEL
        )
        opts.enable_mem_pattern = self.memory_pattern
        if not self.spinning:
            opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
        opts.log_severity_level = 3  # errors only; warnings about fallbacks are ours to say
        return opts


def _cache_dir() -> Path:
    root = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(root) / 'dlp_ros' / 'tensorrt'


def provider_list(name: str) -> list[Any]:
    """The ``providers`` argument of ``InferenceSession`` for one choice (with options)."""
    if name == TENSORRT:
        trt = {
            'trt_engine_cache_enable': True,
            'trt_engine_cache_path': str(_cache_dir()),
            'trt_fp16_enable': False,  # fp32: the parity the export is tested for
        }
        return [(TENSORRT, trt), CUDA, CPU]
    if name == CUDA:
        return [CUDA, CPU]
    return [CPU]


def gpu_device_present() -> bool:
    """An NVIDIA device node exists (``/dev/nvidia0``, Jetson's ``/dev/nvhost-*``, WSL ``dxg``)."""
    dev = Path('/dev')
    return any(any(dev.glob(pattern)) for pattern in _GPU_DEVICE_GLOBS)


def probe(name: str, timeout: float = 120.0) -> str | None:
    """Run the tiny probe graph on provider ``name``; None if it ran there, else why not.

    The probe runs in a child process: onnxruntime prints why a provider failed (on stdout and,
    from its C++ logger, on fd 2), and capturing a file descriptor inside a threaded node would
    swallow every other thread's output meanwhile. The child's output stays out of ours; its
    gist goes into our one line instead.
    """
    if name not in ort.get_available_providers():
        return f'{name} is not in this onnxruntime build ({ort.__version__})'
    cmd = [sys.executable, '-m', 'dlp_ros.providers', name]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f'{name}: the probe did not finish within {timeout:g} s'
    lines = done.stdout.splitlines()
    verdict = next((ln for ln in reversed(lines) if ln.startswith(_VERDICT)), None)
    output = '\n'.join(ln for ln in lines if ln is not verdict) + '\n' + done.stderr
    if verdict is None:
        return f'{name}: the probe process failed ({_gist(output) or done.returncode})'
    result = json.loads(verdict[len(_VERDICT) :])  # {'why': str | None, 'explain': bool}
    if result['explain']:  # onnxruntime's own output says why
        return f'{result["why"]} ({_gist(output) or "no reason given"})'
    return result['why']


_VERDICT = 'dlp_ros-probe: '


def _probe_here(name: str) -> dict[str, Any]:
    """The probe itself, in this process (the child of :func:`probe`): ``why`` it cannot run
    (None: it ran), ``explain``: onnxruntime's output on stdout/stderr tells the reason."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        if name == TENSORRT:
            _cache_dir().mkdir(parents=True, exist_ok=True)
        session = ort.InferenceSession(_PROBE_MODEL, opts, providers=provider_list(name))
        if session.get_providers()[0] != name:
            return {'why': f'{name} could not be created', 'explain': True}
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        (y,) = session.run(None, {'x': x})
        if not np.array_equal(y, 2 * x):
            return {'why': f'{name} ran the probe graph but gave wrong numbers', 'explain': False}
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable", say why
        why = f'{name} failed: {_gist(str(exc)) or type(exc).__name__}'
        return {'why': why, 'explain': False}
    return {'why': None, 'explain': False}


_GIST_PATTERNS = (r'with error: ([^\n]+)', r'(Please install [^.\n]+)', r'(Require [^\n]+?\.)')


def _gist(text: str) -> str:
    """The informative part of onnxruntime's failure text (a missing library, ...)."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', text)
    for pattern in _GIST_PATTERNS:
        match = re.search(pattern, text)
        if match:
            return ' '.join(match.group(1).split())[:200]
    return ' '.join(text.split())[:200]


def select_providers(requested: str = 'auto') -> tuple[list[Any], str, str]:
    """Execution providers for ``requested`` ('auto' | 'cpu' | 'cuda' | 'tensorrt').

    Returns:
        (providers for InferenceSession, chosen provider name, why it was chosen).

    Raises:
        ConfigError: unknown choice, or an explicit 'cuda' / 'tensorrt' that cannot run.
    """
    if requested not in CHOICES:
        raise ConfigError(f'providers must be one of {list(CHOICES)}, got {requested!r}')
    if requested == 'cpu':
        return provider_list(CPU), CPU, 'requested'
    wanted = {'auto': (TENSORRT, CUDA), 'cuda': (CUDA,), 'tensorrt': (TENSORRT,)}[requested]
    listed = ort.get_available_providers()
    reasons = []
    if not any(p in listed for p in wanted):
        reasons.append(
            f'this onnxruntime ({ort.__version__}) has no GPU providers (install onnxruntime-gpu '
            'instead of onnxruntime for CUDA/TensorRT)'
        )
    elif not gpu_device_present():
        reasons.append('no NVIDIA GPU device found (/dev/nvidia*, /dev/nvhost-*, /dev/dxg)')
    else:
        for name in wanted:
            why = probe(name)
            if why is None:
                skipped = f' ({"; ".join(reasons)})' if reasons else ''
                return provider_list(name), name, f'{requested}: a probe ran on it{skipped}'
            reasons.append(why)
    why = '; '.join(reasons)
    if requested != 'auto':
        raise ConfigError(f'providers={requested!r} cannot be used: {why}')
    return provider_list(CPU), CPU, f'auto: GPU providers unusable: {why}'


if __name__ == '__main__':
    # python -m dlp_ros.providers NAME: the probe of one provider, for probe() in the parent
    sys.stdout.write(_VERDICT + json.dumps(_probe_here(sys.argv[1])) + '\n')
