"""Running one training over several processes with torch.distributed, as launched by torchrun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; without them facetl runs as one
process and everything here is a no-op. Rank 0 alone writes the run folder. The rank that is first on
its machine (local rank 0) builds the decoded-image store, and every rank computes its share of the
frozen features, before any of them trains.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def epoch_order(self, index: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        """This rank's share of `index` for `epoch`: one seeded shuffle, split evenly across ranks."""
        sampler = DistributedSampler(range(len(index)), num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
        return index[np.fromiter(iter(sampler), dtype=np.int64)]

    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's part of an evaluation: every rank[::world]-th item, no padding, no repeats."""
        return index[self.rank::self.world]

    def gather_in_order(self, index_length: int, probs: np.ndarray, loss_sum: float) -> tuple[np.ndarray, float]:
        """Put every rank's evaluation shard back in the original order; sum the losses."""
        if not self.active:
            return probs, loss_sum
        parts = [None] * self.world
        dist.all_gather_object(parts, (self.rank, probs, loss_sum))
        full = np.zeros((index_length, probs.shape[1]), dtype=probs.dtype)
        total = 0.0
        for rank, part, part_loss in parts:
            full[rank::self.world] = part
            total += part_loss
        return full, total

    def sum(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()


def init_distributed(device_name: str) -> tuple[Dist, str]:
    """Join the process group torchrun describes; return it and the device this rank uses."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device_name
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    return Dist(rank, world, local_rank, local_world), device_name


def shutdown_distributed(group: Dist) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()
