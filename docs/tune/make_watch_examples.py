"""Make the README's pictures of watching a run: the loss curve and validation grids of the walkthrough.

    python docs/tune/make_watch_examples.py   # about 2 minutes on a 2-core CPU; writes loss.png and
                                              # validation-step-*.png here

It runs the walkthrough's `dream tune --preset demo` on docs/tune/cross as a user would, with a validation
round of 4 pictures every 200 steps, and copies what the run wrote into its output folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
WORK = HERE.parents[1] / "build" / "tune-watch-example"  # git-ignored
SHOWN_ROUNDS = (200, 800)  # the first validation round and the last: the cross appearing


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    lora = WORK / "loras" / "cross"  # the walkthrough's -o loras/cross
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dreamcli", "tune", "--preset", "demo", "--images", str(HERE / "cross"),
         "--class", "shape", "--prompt", "a sks shape", "--class-prompt", "a shape", "-o", str(lora),
         "--validation-every", "200", "--validation-images", "4"],
        check=True, capture_output=True, text=True,
    )
    notes = [line for line in done.stderr.splitlines() if line.strip()]
    print("\n".join(notes[-2:]), f"({time.perf_counter() - started:.0f} s in all)", sep="\n")
    shutil.copyfile(lora / "loss.png", HERE / "loss.png")
    print(HERE / "loss.png")
    for step in SHOWN_ROUNDS:
        target = HERE / f"validation-step-{step:06d}.png"
        shutil.copyfile(lora / "validation" / f"step-{step:06d}.png", target)
        print(target)


if __name__ == "__main__":
    main()
