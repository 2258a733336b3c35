"""The real `dream` process: start-up imports, entry points, Ctrl-C, an unreachable hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from PIL import Image

from conftest import written

HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")


def run(*args, env=None, timeout=120, **kwargs):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, **kwargs,
    )


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from dreamcli.cli import app\n"
        "for argv in (['--help'], ['gen', '--help'], ['info', '--help'], ['gen', '--scheduler', 'list']):\n"
        "    try:\n"
        "        app(argv, prog_name='dream')\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, (argv, e.code)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_version_and_module_entry_point():
    import dreamcli

    result = run("-m", "dreamcli", "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dreamcli {dreamcli.__version__}"


def test_ctrl_c_keeps_finished_images_and_exits_130(tiny, tmp_path):
    outdir = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamcli", "gen", "-m", str(tiny["sd1"]), "x", "-n", "200", "--steps", "2",
         "-s", "1", "-o", str(outdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and children
        # inherit that (CI may run us so): give the child the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300  # model loading alone took 90 s on a heavily shared CI machine
    while len(written(outdir)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    files = written(outdir)
    assert 2 <= len(files) < 200
    assert stdout.split() == [str(f) for f in files]  # every printed path exists, and only those
    for f in files:
        Image.open(f).load()  # complete images, not half-written ones
    assert not [p for p in outdir.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert "interrupted: kept" in stderr


def test_unreachable_hub(tmp_path):
    # Online mode, but the hub address refuses connections (a closed port on this machine).
    result = run(
        "-m", "dreamcli", "gen", "-m", "someone/not-cached", "x", "-o", str(tmp_path / "out"),
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2",
             "HF_HUB_DOWNLOAD_TIMEOUT": "2"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot get 'someone/not-cached'")
    assert "not in the local cache" in result.stderr
    assert not (tmp_path / "out").exists()
