"""Launching the 2-process CPU runs of tests/distributed/*.py and comparing what they save (shared by every
method's distributed tests)."""

import os
import signal
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from .helpers import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
META = ("__world_size__", "__teacher_sharded__")  # bookkeeping entries the train loops save next to the weights


def free_ports(count: int) -> list[int]:
    """Distinct free ports (the sockets stay open until all are chosen, so the OS cannot hand one out twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start(command: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start a launcher in its own session, so it and its ranks can be killed together."""
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or ENV, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip


def kill(process: subprocess.Popen) -> None:
    """Kill a launcher and its ranks (its own session, so its process group id is its pid)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def wait(name: str, process: subprocess.Popen, timeout: float = 300) -> str:
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(process)
        log, _ = process.communicate()
        raise AssertionError(f"{name} timed out:\n{log[-6000:]}") from None
    assert process.returncode == 0, f"{name} failed (exit {process.returncode}):\n{log[-6000:]}"
    return log


def launch_train_loop(script: str, mode: str, nproc: int, port: int, out, steps: int) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        str(REPO / script), "--mode", mode, "--steps", str(steps), "--dtype", "float64", "--out", str(out),
    ]  # fmt: skip
    return start(command), str(out)


def collect(mode: str, launched: tuple[subprocess.Popen, str]) -> dict[str, torch.Tensor]:
    process, out = launched
    wait(f"{mode} run", process)
    return load_file(out)


def run_layouts(script: str, layouts: dict[str, int], tmp, steps: int) -> dict[str, dict[str, torch.Tensor]]:
    """Run every layout (mode -> process count) at once and return what each saved. The 1 + 2 + 2 ranks share the
    cores; startup (mostly imports) dominates, so overlapping is faster than running them one after another."""
    launched = {
        mode: launch_train_loop(script, mode, nproc, port, tmp / f"{mode}.safetensors", steps)
        for (mode, nproc), port in zip(layouts.items(), free_ports(len(layouts)))
    }
    try:
        return {mode: collect(mode, run) for mode, run in launched.items()}
    finally:
        for process, _ in launched.values():
            kill(process)  # still running only if another run failed


def weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if name not in META}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in b)


def assert_same_teacher(other: dict[str, torch.Tensor], single: dict[str, torch.Tensor], bound: float) -> None:
    """Same keys, float64, equal within a loose tolerance and, overall, within `bound` (float64 rounding)."""
    other, single = weights(other), weights(single)
    assert other.keys() == single.keys()
    for name in single:
        assert other[name].dtype == torch.float64
        torch.testing.assert_close(other[name], single[name], atol=1e-5, rtol=1e-4, msg=name)
    assert max_diff(other, single) < bound
