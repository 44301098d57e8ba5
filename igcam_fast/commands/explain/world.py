"""The processes of a run: one, or torchrun's ranks (barriers and a few sums travel between them)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch

from igcam_fast.commands.common import parse_device

from .options import ExplainError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    initialized: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def barrier(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (float64; exact for counts below 2**53)."""
        if not self.initialized:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_flag(self, flag: int) -> int:
        """Rank 0's flag on every rank (also a barrier: the others wait until rank 0 sends it)."""
        if not self.initialized:
            return flag
        import torch.distributed as dist

        t = torch.tensor([flag], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized = False


def choose_device(device_arg: str | None, local_rank: int) -> torch.device:
    """--device as a torch.device (cuda:LOCAL_RANK for a bare 'cuda'); ExplainError when it cannot be used."""
    if not device_arg:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = parse_device(device_arg)  # a malformed name or a GPU this machine lacks: one line, exit 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
        if local_rank >= torch.cuda.device_count():
            raise ExplainError(f"--device {device_arg}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                               "CUDA device(s) are visible")
    return device


def init_world(device_arg: str | None, timeout_hours: float) -> World:
    """From torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), or one process."""
    rank = int(os.environ.get("RANK", "0"))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_arg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = World(rank, size, local_rank, False, device)
    if size > 1:
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=size,
                                timeout=datetime.timedelta(hours=timeout_hours),
                                **({"device_id": device} if device.type == "cuda" else {}))
        world.initialized = True
    return world
