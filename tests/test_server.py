"""`dream serve` over real HTTP (a server subprocess on the demo model) and `dream gen --server`."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import pixels, written

AUTH = ("user", "s3cret:with-colon")
SMALL = {"steps": 2, "width": 64, "height": 64, "cfg_scale": 2}
LONG = {"prompt": "a long one", "steps": 1000, "width": 128, "height": 128, "seed": 1}  # ~30 s unless interrupted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path, *args) -> SimpleNamespace:
    """`dream serve` in a subprocess on a free port; returns once it answers HTTP."""
    port = free_port()
    handle = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "dreamcli", "serve", "--port", str(port), *map(str, args)],
                            stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dream serve exited early: {log.read_text()}")
        try:
            httpx.get(f"{url}/sdapi/v1/options", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError(f"dream serve did not answer: {log.read_text()}")
    return SimpleNamespace(proc=proc, url=url, port=port, log=log, handle=handle)


def stop_server(server) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(10)
    server.handle.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: with credentials, an output folder, a queue of 2 and small limits."""
    root = tmp_path_factory.mktemp("serve")
    srv = start_server(root / "serve.log", "--api-auth", ":".join(AUTH), "-o", root / "served", "--queue", 2,
                       "--max-steps", 1000, "--max-size", 512, "--max-images", 8, "--max-body", 2_000_000)
    srv.outdir = root / "served"
    srv.client = httpx.Client(base_url=srv.url, auth=AUTH, timeout=120)
    yield srv
    srv.client.close()
    stop_server(srv)


def txt2img(server, **fields):
    return server.client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **SMALL, **fields})


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def running(server, jobs: int = 1):
    """True once the running job has taken a step and `jobs` jobs are running or waiting."""
    state = server.client.get("/sdapi/v1/progress").json()["state"]
    return state["sampling_step"] > 0 and state["job_count"] >= jobs


def dream(*args, env=None, timeout=120):
    """`dream ...` in a subprocess (what a shell loop runs)."""
    return subprocess.run([sys.executable, "-m", "dreamcli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


# ---- an A1111 client, as a user's script would use it ----

def test_webuiapi_txt2img_and_img2img(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username=AUTH[0], password=AUTH[1],
                            sampler="DPM++ 2M Karras", steps=2)
    result = api.txt2img(prompt="a red circle", seed=7, width=64, height=64, cfg_scale=2, batch_size=2)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["seed"] == 7 and result.info["all_seeds"] == [7, 8]
    assert "Seed: 7" in result.info["infotexts"][0] and "Sampler: DPM++ 2M Karras" in result.info["infotexts"][0]
    record = json.loads(result.image.info["dreamcli"])  # the PNG carries dream's record, as `dream gen` writes it
    assert record["seed"] == 7 and record["request"]["model"]["scheduler"] == "dpm++2m-karras"
    assert result.image.info["parameters"] == result.info["infotexts"][0]
    assert not result.info["warnings"]  # webuiapi's many default fields ask for nothing dream lacks
    assert {p.name for p in written(server.outdir)} >= {"00000-7-a-red-circle.png", "00001-8-a-red-circle.png"}

    blue = Image.new("RGB", (64, 64), (20, 40, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    painted = api.img2img(images=[blue], mask_image=mask, mask_blur=0, prompt="a red circle", seed=3,
                          denoising_strength=1.0, width=64, height=64, cfg_scale=2).image
    kept = np.asarray(painted.convert("RGB"))[:, 32:]
    assert (kept == (20, 40, 200)).all()  # outside the mask, the input's pixels bit for bit
    assert not (np.asarray(painted.convert("RGB"))[:, :32] == (20, 40, 200)).all()
    assert json.loads(painted.info["dreamcli"])["task"] == "inpaint"

    redrawn = api.img2img(images=[blue], prompt="a red circle", seed=3, denoising_strength=0.5, width=64, height=64)
    record = json.loads(redrawn.image.info["dreamcli"])
    assert redrawn.image.size == (64, 64) and record["task"] == "img2img" and record["request"]["strength"] == 0.5


def test_models_samplers_options_and_unknown_fields(server):
    models = server.client.get("/sdapi/v1/sd-models").json()
    assert models[0]["title"] == "demo" and "sdxl" in [m["title"] for m in models]
    samplers = {s["name"]: s["aliases"] for s in server.client.get("/sdapi/v1/samplers").json()}
    assert "euler-a" in samplers["Euler a"] and "ddim" in samplers["DDIM"]
    assert server.client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "demo"
    answer = txt2img(server, seed=2, frobnicate=3, tiling=True, override_settings={"CLIP_stop_at_last_layers": 2})
    assert answer.status_code == 200
    warnings = json.loads(answer.json()["info"])["warnings"]
    assert "frobnicate is unknown: ignored" in warnings and "tiling is not supported by dream: ignored" in warnings
    assert any("CLIP_stop_at_last_layers" in w for w in warnings)
    assert server.client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "demo"}).status_code == 200
    assert server.client.post("/sdapi/v1/refresh-checkpoints").status_code == 200


# ---- reproducible: the PNG it returns is a `dream gen` PNG ----

def test_server_png_is_remade_by_dream_gen_from(server, cli, tmp_path):
    answer = txt2img(server, seed=21, sampler_name="Euler a")
    saved = tmp_path / "from-server.png"
    saved.write_bytes(base64.b64decode(answer.json()["images"][0]))
    result = cli("gen", "--from", saved, "-o", tmp_path / "again", "-q")
    assert result.exit_code == 0, result.output
    (again,) = written(tmp_path / "again")
    assert again.name == "00000-21-a-red-circle.png"
    assert np.array_equal(pixels(again), pixels(saved))


def test_gen_server_writes_what_a_local_run_writes(server, cli, tmp_path):
    args = ["a red circle", "a blue square", "-n", 2, "-s", 11, "--steps", 2, "-W", 64, "-H", 64, "--json"]
    local = cli("gen", *args, "-o", tmp_path / "local", "-q")
    url = f"http://{AUTH[0]}:{AUTH[1]}@127.0.0.1:{server.port}"
    remote = dream("gen", *args, "-o", tmp_path / "remote", env={"DREAM_SERVER": url})
    assert local.exit_code == 0 and remote.returncode == 0, remote.stderr
    names = [p.name for p in written(tmp_path / "local")]
    assert names == [p.name for p in written(tmp_path / "remote")] and len(names) == 4
    for name in names:
        assert np.array_equal(pixels(tmp_path / "local" / name), pixels(tmp_path / "remote" / name))
    lines = [json.loads(line) for line in remote.stdout.splitlines()]
    expected = [json.loads(line) for line in local.stdout.splitlines()]
    for line in lines + expected:
        line["path"] = Path(line["path"]).name
    assert lines == expected
    # The records match too: `dream gen --from` on either gives the same settings.
    meta = [Image.open(tmp_path / folder / names[0]).info["parameters"] for folder in ("local", "remote")]
    assert meta[0] == meta[1]
    again = dream("gen", "--from", tmp_path / "remote" / names[1], "-o", tmp_path / "again", env={"DREAM_SERVER": url})
    assert again.returncode == 0, again.stderr
    assert np.array_equal(pixels(written(tmp_path / "again")[0]), pixels(tmp_path / "local" / names[1]))


def test_gen_server_errors_exit_like_a_local_run(server, tmp_path):
    closed = free_port()
    unreachable = dream("gen", "--server", f"http://127.0.0.1:{closed}", "x", "-o", tmp_path / "none")
    assert unreachable.returncode == 1 and unreachable.stdout == ""
    assert len(unreachable.stderr.strip().splitlines()) == 1 and "cannot reach the dream server" in unreachable.stderr
    assert not (tmp_path / "none").exists()  # and no local model was loaded instead
    no_auth = dream("gen", "--server", server.url, "x", "-o", tmp_path / "none")
    assert no_auth.returncode == 1 and "wants credentials" in no_auth.stderr
    url = f"http://{AUTH[0]}:{AUTH[1]}@127.0.0.1:{server.port}"
    too_many = dream("gen", "--server", url, "x", "--steps", 5000, "-o", tmp_path / "none")
    assert too_many.returncode == 2 and "over this server's limit of 1000" in too_many.stderr
    # The client path never loads torch: that is what makes it fast.
    probe = dream("gen", "--server", url, "x", "--steps", 2, "-W", 64, "-H", 64, "-o", tmp_path / "fast",
                  env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert probe.returncode == 0 and len(written(tmp_path / "fast")) == 1
    assert not [line for line in probe.stderr.splitlines() if line.endswith(("| torch", "| diffusers"))]


# ---- faults and security ----

@pytest.mark.parametrize("body, status, text", [
    (b"{not json", 422, "JSON decode error"),
    (b'{"prompt": "x", "steps": "many"}', 422, "valid integer"),
    (b"[1, 2]", 422, "valid dictionary"),
    (b'{"prompt": "x", "steps": 5000}', 422, "over this server's limit of 1000"),
    (b'{"prompt": "x", "width": 1024, "height": 64}', 422, "limit of 512 px"),
    (b'{"prompt": "x", "batch_size": 4, "n_iter": 4}', 422, "limit of 8"),
    (b'{"prompt": "x", "width": 65}', 422, "not a multiple of 8"),
    (b'{"prompt": "x", "steps": 2, "sampler_name": "Frobnicator"}', 422, "use one of"),
    (b'{"prompt": "x", "override_settings": {"sd_model_checkpoint": "/etc/passwd"}}', 422, "looks like a path"),
    (b'{"prompt": "x", "override_settings": {"sd_model_checkpoint": "../demo"}}', 422, "looks like a path"),
    (b'{"prompt": "x", "override_settings": {"sd_model_checkpoint": "nonesuch"}}', 422, "unknown model"),
    (b'{"prompt": "' + b"x" * 2_100_000 + b'"}', 413, "over this server's limit"),
])
def test_bad_bodies_get_4xx_with_a_message(server, body, status, text):
    answer = server.client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status
    assert text in json.dumps(answer.json()["detail"])


def test_bad_pictures_and_paths_are_refused_and_the_server_keeps_serving(server, tmp_path):
    answer = server.client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": ["bm90IGEgcGljdHVyZQ=="]})
    assert answer.status_code == 422 and "not a readable base64 picture" in answer.json()["detail"]
    demo_folder = str(Path(__import__("dreamcli").__file__).parent / "demo" / "model")  # a real model, as a path
    answer = server.client.post("/sdapi/v1/options", json={"sd_model_checkpoint": demo_folder})
    assert answer.status_code == 422 and "looks like a path" in answer.json()["detail"]
    answer = server.client.post("/sdapi/v1/txt2img", json={"prompt": "x", "enable_hr": True,
                                                           "hr_upscaler": "/etc/passwd.pth"})
    assert answer.status_code == 422 and "is a file: this server takes latent, lanczos" in answer.json()["detail"]
    for name in ("..%2Fserve.log", "%2E%2E", ".hidden", "nonesuch.png"):
        assert server.client.get(f"/outputs/{name}").status_code == 404
    page = server.client.get("/")
    assert page.status_code == 200 and "/outputs/00000-7-a-red-circle.png" in page.text
    assert server.client.get("/outputs/00000-7-a-red-circle.png").content[:4] == b"\x89PNG"
    assert txt2img(server, seed=5).status_code == 200


def test_auth_is_required_everywhere(server):
    import webuiapi

    for path in ("/sdapi/v1/options", "/sdapi/v1/sd-models", "/", "/docs"):
        answer = httpx.get(server.url + path)
        assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(server.url + "/sdapi/v1/options", auth=(AUTH[0], "wrong")).status_code == 401
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username=AUTH[0], password="wrong", steps=2)
    with pytest.raises(RuntimeError, match="401"):
        api.txt2img(prompt="x", width=64, height=64)


def test_concurrent_clients_each_get_their_own_pictures(server):
    answers = {}

    def ask(seed):
        # Three clients against one running job and a queue of 2: when all three arrive before the worker has
        # taken the first, one is told 503 with Retry-After, and retries as a client should.
        for _ in range(5):
            answers[seed] = txt2img(server, seed=seed, prompt=f"a shape {seed}")
            if answers[seed].status_code != 503:
                return
            time.sleep(min(float(answers[seed].headers.get("Retry-After", 1)), 5))

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (31, 32, 33)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(answer.status_code == 200 for answer in answers.values())
    for seed, answer in answers.items():
        assert json.loads(answer.json()["info"])["all_seeds"] == [seed]
    alone = txt2img(server, seed=32, prompt="a shape 32").json()["images"][0]
    assert np.array_equal(np.asarray(decoded(alone)), np.asarray(decoded(answers[32].json()["images"][0])))


def test_full_queue_is_503_and_interrupt_stops_the_running_job(server):
    answers = {}

    def ask(name, **fields):
        answers[name] = txt2img(server, **fields)

    long = threading.Thread(target=ask, args=("long",), kwargs=LONG)
    long.start()
    wait_for(lambda: running(server))
    waiting = [threading.Thread(target=ask, args=(f"wait{i}",), kwargs={"seed": i}) for i in range(2)]
    for thread in waiting:
        thread.start()
    wait_for(lambda: running(server, jobs=3))
    full = txt2img(server, seed=9)
    assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1 and "queue is full" in full.text
    assert server.client.post("/sdapi/v1/interrupt").status_code == 200
    for thread in [long, *waiting]:
        thread.join(60)
    assert answers["long"].status_code == 200 and answers["long"].json()["images"] == []
    assert "interrupted" in json.loads(answers["long"].json()["info"])["warnings"][0]
    assert [len(answers[f"wait{i}"].json()["images"]) for i in range(2)] == [1, 1]


def test_a_client_killed_mid_request_does_not_hurt_others(server):
    script = (f"import httpx; httpx.post('{server.url}/sdapi/v1/txt2img', auth={AUTH!r}, timeout=60, "
              f"json={LONG!r})")
    victim = subprocess.Popen([sys.executable, "-c", script])
    wait_for(lambda: running(server))
    waiting = {}
    other = threading.Thread(target=lambda: waiting.update(answer=txt2img(server, seed=44)))
    other.start()  # queued behind the victim's job
    wait_for(lambda: running(server, jobs=2))
    victim.kill()
    victim.wait(10)
    other.join(20)  # the orphaned ~30 s job is stopped, so the other client is answered at once, in full
    assert waiting["answer"].status_code == 200 and json.loads(waiting["answer"].json()["info"])["all_seeds"] == [44]
    assert server.proc.poll() is None and "Traceback" not in server.log.read_text()


def test_help_imports_no_server_library():
    code = ("import sys\nfrom dreamcli.cli import app\n"
            "for argv in (['--help'], ['serve', '--help'], ['gen', '--help']):\n"
            "    try:\n        app(argv, prog_name='dream')\n    except SystemExit as e:\n        assert not e.code\n"
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'torch', 'diffusers') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_other_addresses_need_listen_and_warn(tmp_path):
    refused = dream("serve", "--host", "0.0.0.0", "--port", free_port())
    assert refused.returncode == 2 and "--listen" in refused.stderr
    # With --listen the warning comes at once, before the model loads (here it fails to: nothing is bound).
    warned = dream("serve", "--listen", "--port", free_port(), "-m", tmp_path / "missing.safetensors")
    assert "warning: dream serve listens on http://0.0.0.0" in warned.stderr and "WITHOUT credentials" in warned.stderr
    assert warned.returncode == 2 and "not found" in warned.stderr


def test_a1111_sampler_names_map_to_dream_schedulers():
    from dreamcli import families
    from dreamcli.errors import InputError
    from dreamcli.server.a1111 import scheduler_for

    sd1, flux = families.get("sd1"), families.get("flux")
    assert scheduler_for("Euler a", "automatic", sd1) == ("euler-a", [])
    assert scheduler_for("DPM++ 2M", "Karras", sd1) == ("dpm++2m-karras", [])  # newer A1111: the schedule apart
    assert scheduler_for("Euler", None, flux) == ("flow-euler", [])
    name, notes = scheduler_for("Euler a", None, flux)  # webuiapi's default, on a model it cannot run
    assert name is None and "does not fit" in notes[0]
    with pytest.raises(InputError, match="use one of"):
        scheduler_for("Frobnicator", None, sd1)


def test_sigterm_answers_waiting_clients_and_exits_within_seconds(server):
    """Last in the module: it stops the module's server."""
    answers = {}

    def ask(name, **fields):
        answers[name] = txt2img(server, **{"prompt": name, **fields})

    threads = [threading.Thread(target=ask, args=("long",), kwargs=LONG)]
    threads[0].start()
    wait_for(lambda: running(server))
    threads.append(threading.Thread(target=ask, args=("waiting",)))
    threads[1].start()
    wait_for(lambda: running(server, jobs=2))
    stopped = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(15)
    assert time.monotonic() - stopped < 8
    for thread in threads:
        thread.join(10)
    for name in ("long", "waiting"):  # both answered, not left hanging
        assert answers[name].status_code == 503 and "shutting down" in answers[name].json()["detail"]
    assert "Traceback" not in server.log.read_text()
