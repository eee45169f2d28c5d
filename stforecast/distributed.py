"""DistributedDataParallel plumbing for the training loop: the process group under ``torchrun``, and the few
collectives the loop needs; in a single process every call is a no-op."""

from __future__ import annotations

import os

import torch


class Distributed:
    """Rank, world size and the few collectives the loop needs (no-ops in a single process)."""

    def __init__(self, device: torch.device):
        self.on = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank, self.world, self.device = 0, 1, device
        if self.on:
            import torch.distributed as dist

            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if device.type == "cuda":
                self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
                torch.cuda.set_device(self.device)

    def gather(self, obj):
        """Every rank's ``obj``, in rank order (for RNG states kept per rank)."""
        if not self.on:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_rank0(self, obj):
        """Rank 0's ``obj`` on every rank, so decisions (early stopping) cannot diverge."""
        if not self.on:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.on:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
