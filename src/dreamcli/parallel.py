"""Sharding image jobs across the processes torchrun or `accelerate launch` started (one per GPU or node)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


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
        """Leave the process group (torch warns at exit otherwise)."""
        self.state.destroy_process_group()


def start_shard(device: str) -> Shard:
    """Join the launched processes: over gloo on CPU (accelerate needs cpu=True to form MULTI_CPU
    from torchrun's environment), over NCCL on GPUs, one GPU per process."""
    from accelerate import PartialState

    return Shard(PartialState(cpu=device == "cpu"))


def save_numbered(image, outdir: Path, counter: int, seed: int, prompt: str, fmt: str, **save_kwargs) -> Path:
    """Write an image under the counter it was given (not the folder's next free one), never overwriting.

    Each process writes its share of a run concurrently, so names must come from the job's place in
    the run, not from the folder's state at write time. The file is written by io's save_atomic into
    a private staging folder, then linked into place; a name already taken (a process outside this
    run wrote into the folder) moves on to the next counter, as save_atomic does.
    """
    from dreamcli.io.outputs import output_name, save_atomic

    staging = Path(tempfile.mkdtemp(dir=outdir, prefix=".dream-"))
    try:
        staged = save_atomic(image, staging, seed, prompt, fmt, **save_kwargs)
        ext = staged.suffix[1:]
        while True:
            final = outdir / output_name(counter, seed, prompt, ext)
            try:
                os.link(staged, final)
                return final
            except FileExistsError:
                counter += 1
            except OSError:  # no hard links on this file system (FAT, some network mounts)
                if final.exists():
                    counter += 1
                    continue
                os.rename(staged, final)
                return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
