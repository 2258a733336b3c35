"""A shell loop of `dream gen --server` calls against the same loop run locally and one `dream gen --prompts` run.

Starts `dream serve` on the demo model (its start-up is timed apart), then times, end to end as a shell sees them:
N `dream gen --server URL "prompt i"` calls, N local `dream gen "prompt i"` calls, and one `dream gen --prompts`
of the same N prompts. Each picture is the demo model's default (128 px, 20 steps). Prints seconds and ratios.

    python benchmarks/server.py              # 10 prompts
    python benchmarks/server.py --n 5 --threads 1 --json

--threads N sets OMP_NUM_THREADS for every timed process: on a machine busy with other work, torch's default
of one spinning thread per core can make each picture tens of times slower, the server's and the local ones alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

DREAM = [sys.executable, "-m", "dreamcli"]
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a purple circle",
           "an orange square", "a white triangle", "a red square", "a blue circle", "a green star"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("dream serve exited before it answered")
        try:
            urllib.request.urlopen(f"{url}/sdapi/v1/options", timeout=2).read()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise SystemExit("dream serve did not answer in time")


def timed(commands: list[list[str]], env: dict) -> float:
    """Seconds for the commands run one after another, as a shell loop runs them."""
    started = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="prompts in each loop (at most 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server and every dream call")
    args = parser.parse_args()
    prompts = (PROMPTS * 2)[: args.n]
    work = Path(tempfile.mkdtemp(prefix="dream-bench-server-"))
    env = {**os.environ, "DREAMCLI_HOME": str(work / "home")}  # no user config or preset changes the work
    env.pop("DREAM_SERVER", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen([*DREAM, "serve", "--port", str(port), "-q"], env=env)
    try:
        wait_ready(url, server)
        startup = time.perf_counter() - started
        print(f"server up in {startup:.1f} s; timing the loops", file=sys.stderr, flush=True)
        remote = timed([[*DREAM, "gen", "--server", url, p, "-s", str(i), "-o", str(work / "remote"), "-q"]
                        for i, p in enumerate(prompts)], env)
        local = timed([[*DREAM, "gen", p, "-s", str(i), "-o", str(work / "local"), "-q"]
                       for i, p in enumerate(prompts)], env)
        (work / "prompts.txt").write_text("\n".join(prompts) + "\n")
        batch = timed([[*DREAM, "gen", "--prompts", str(work / "prompts.txt"), "-s", "0", "-o", str(work / "file"),
                        "-q"]], env)
        same = all((work / "remote" / p.name).read_bytes() == p.read_bytes() for p in (work / "local").iterdir())
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "pictures": len(prompts), "server_startup_s": round(startup, 2), "server_loop_s": round(remote, 2),
        "local_loop_s": round(local, 2), "prompts_file_s": round(batch, 2),
        "per_picture_server_s": round(remote / len(prompts), 3), "per_picture_local_s": round(local / len(prompts), 3),
        "local_over_server": round(local / remote, 2), "server_over_prompts_file": round(remote / batch, 2),
        "server_files_equal_local": same,
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"dream serve start-up (load once):           {startup:6.2f} s")
    n = len(prompts)
    print(f"{n} x dream gen --server URL (shell loop):  {remote:6.2f} s  ({remote / n:.2f} s each)")
    print(f"{n} x dream gen, local (shell loop):        {local:6.2f} s  ({local / n:.2f} s each)")
    print(f"1 x dream gen --prompts ({len(prompts)} lines):          {batch:6.2f} s")
    print(f"local loop / server loop:                  {local / remote:6.2f} x")
    print(f"server loop / --prompts run:               {remote / batch:6.2f} x")
    print(f"server files byte-equal to local ones:     {same}")


if __name__ == "__main__":
    main()
