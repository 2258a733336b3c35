"""Sharding image jobs across the processes torchrun or `accelerate launch` started (one per GPU or node)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def launched() -> bool:
    """True when a launcher started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Shard:
    """This process's place among the launched ones, over accelerate's PartialState."""

    state: object  # accelerate.PartialState

    @property
    def rank(self) -> int:
        """This process's index (0 is the main one)."""
        return self.state.process_index

    @property
    def world(self) -> int:
        """How many processes share the work."""
        return self.state.num_processes

    @property
    def is_main(self) -> bool:
        """True in the process that prints results and the summary."""
        return self.state.is_main_process

    def share(self, value):
        """The main process's `value`, in every process (also a barrier: nobody passes before main has it)."""
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def take(self, items: list) -> list:
        """This process's contiguous share of `items` (consecutive jobs keep batching together)."""
        with self.state.split_between_processes(items) as mine:
            return list(mine)

    def gather(self, items: list) -> list:
        """Every process's `items`, concatenated in process order, in every process."""
        from accelerate.utils import gather_object

        return gather_object(items)

    def close(self) -> None:
        """Leave the process group (torch warns at exit otherwise), once every process is done with it:
        gloo aborted the main process ("terminate called without an active exception") now and then
        when it left while another was still finishing its gather."""
        self.state.wait_for_everyone()
        self.state.destroy_process_group()


def start_shard(device: str) -> Shard:
    """Join the launched processes: over gloo on CPU (accelerate needs cpu=True to form MULTI_CPU
    from torchrun's environment), over NCCL on GPUs, one GPU per process."""
    from accelerate import PartialState

    return Shard(PartialState(cpu=device == "cpu"))
