"""Start a CollaFuse run on Flower: the simulation engine, or a localhost deployment.

``collafuse-privacy flower run`` calls :func:`run_flower`: it prepares the run directory
(``plan.prepare``), runs the apps (``apps.py``), then joins the parties' records into the
standard run layout (``collect.collect``).

* ``engine="simulation"``: Flower's simulation engine (Ray) in this process, one virtual
  SuperNode per client.
* ``engine="deployment"``: a SuperLink and one SuperNode per client as local processes (their
  logs in ``flower/logs/``), the app submitted with ``flwr run``. A SuperNode that dies is
  restarted (up to 3 times); the server asks its client again and the client resumes from its
  own last checkpoint. With ``superlink=ADDR`` nothing is started: the app is submitted to that
  SuperLink, whose SuperNodes the user started (README: "Flower").

Every party runs with the same number of CPU threads (``OMP_NUM_THREADS``, default: this
machine's torch default, the in-process run's), because CPU kernels may round differently with
another count; with equal counts the run is bit-identical to the in-process one. Their OpenMP
threads wait passively (``OMP_WAIT_POLICY=PASSIVE``): the parties share the cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from ..config import Config
from ..errors import UserError
from ..io import atomic_write_text
from ..run.layout import FLOWER_APP, FLOWER_HOME, FLOWER_LOGS, FLOWER_RESULT, PARTY_LOG, SERVER, party_dir
from .collect import collect
from .plan import prepare

ENGINES = ("simulation", "deployment")
RESTARTS = 3


def require_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise UserError("Flower is not installed: pip install -e '.[flower]' (an optional extra)") from None


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(address: str, timeout: float = 3.0) -> Optional[str]:
    """None when ``host:port`` accepts a connection, else why not."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return f"'{address}' is not host:port"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _thread_env(threads: Optional[int]) -> dict:
    import torch

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads or torch.get_num_threads())
    # The parties share the cores; OpenMP threads that spin while they wait for work slow every
    # party down several times over (measured: 3 clients x 2 threads on 2 cores, 112 s active
    # against 39 s passive). The wait policy does not change any number.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # the SuperLink and SuperNodes start flower-superexec / flwr-clientapp by name
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def write_app(run_dir: Path, device: str, node_timeout: float, address: str, sample: bool = True) -> tuple[Path, Path]:
    """The Flower app folder (``flwr run`` builds it into a FAB) and a Flower home whose default
    SuperLink connection is ``address``."""
    app, home = Path(run_dir) / FLOWER_APP, Path(run_dir) / FLOWER_HOME
    app.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    atomic_write_text(app / "pyproject.toml", f'''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "collafuse-flower"
version = "1.0.0"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "collafuse-privacy"

[tool.flwr.app.components]
serverapp = "collafuse_privacy.flower.apps:server_app"
clientapp = "collafuse_privacy.flower.apps:client_app"

[tool.flwr.app.config]
run-dir = "{Path(run_dir).resolve()}"
device = "{device}"
node-timeout = {float(node_timeout)}
sample = {str(bool(sample)).lower()}
''')
    atomic_write_text(home / "config.toml", f'''[superlink]
default = "local"

[superlink.local]
address = "{address}"
insecure = true
''')
    return app, home


class _Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict):
        self.args, self.log, self.env = args, log, env
        self.p: Optional[subprocess.Popen] = None
        self.restarts = 0
        self.start()

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.p = subprocess.Popen(self.args, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                      start_new_session=True)  # fmt: skip

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def stop(self) -> None:
        if self.p is None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def run_status(home: Path, run: str, env: dict) -> Optional[str]:
    """The SuperLink's status of run ``run`` (``running``, ``finished:failed``, ...), or None."""
    import json

    try:
        out = subprocess.run([_bin("flwr"), "ls", "local", "--run-id", run, "--format", "json"], capture_output=True,
                             text=True, timeout=60, env={**env, "FLWR_HOME": str(home)})  # fmt: skip
        data = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    runs = data.get("runs") if isinstance(data, dict) else None
    return str(runs[0].get("status")) if runs else None


def _wait_result(run_dir: Path, since: float, procs: list[_Proc], link: Optional[_Proc], total: int,
                 quiet: bool, status=None, run_id: str = "RUN_ID") -> dict:  # fmt: skip
    """Wait for the ServerApp's ``flower/result.json``; restart SuperNodes that die on the way.
    ``status()``: the run's status at the SuperLink, asked every 10 s (a ServerApp that dies
    before it can write its result)."""
    import json

    from tqdm import tqdm

    path = Path(run_dir) / FLOWER_RESULT
    log = party_dir(run_dir, SERVER) / PARTY_LOG
    bar = tqdm(total=total, desc="flower train", disable=quiet, dynamic_ncols=True)
    asked, ended = time.monotonic(), None
    try:
        while True:
            if path.is_file():
                res = json.loads(path.read_text())
                if res.get("time", 0) >= since:
                    return res
            if link is not None and not link.alive():
                raise UserError(f"the SuperLink stopped (see {link.log})")
            for p in procs:
                if not p.alive():
                    if p.restarts >= RESTARTS:
                        raise UserError(f"a SuperNode died {RESTARTS + 1} times (see {p.log}); rerun the same "
                                        "command to resume")  # fmt: skip
                    p.restarts += 1
                    print(f"a SuperNode stopped (exit {p.p.returncode}); restarting it (see {p.log})",
                          file=sys.stderr, flush=True)  # fmt: skip
                    p.start()
            if log.is_file():
                done = sum(1 for _ in open(log))
                bar.update(max(0, done - bar.n))
            if status is not None and time.monotonic() - asked > 10:
                asked = time.monotonic()
                st = status()
                if st and st.startswith("finished"):
                    ended = ended or time.monotonic()
                    if time.monotonic() - ended > 15:
                        raise UserError(f"the ServerApp ended ({st}) without a result; its log: "
                                        f"FLWR_HOME={Path(run_dir) / FLOWER_HOME} flwr log {run_id} local")  # fmt: skip
            time.sleep(0.5)
    finally:
        bar.close()


def submit(app: Path, home: Path, env: dict) -> str:
    """``flwr run`` the app on the home's default SuperLink; returns the run id."""
    out = subprocess.run([_bin("flwr"), "run", str(app), "local"], env={**env, "FLWR_HOME": str(home)},
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    text = out.stdout + out.stderr
    for line in text.splitlines():
        if "Successfully started run" in line:
            return line.rsplit(" ", 1)[-1]
    last = [ln.strip(" │╭╮╰╯─") for ln in text.splitlines() if ln.strip(" │╭╮╰╯─")]
    raise UserError(f"flwr run failed: {' '.join(last[-3:]) if last else 'no output'}")


def start_supernode(run_dir: Path, k: int, superlink: str, env: dict) -> _Proc:
    args = [_bin("flower-supernode"), "--insecure", "--superlink", superlink, "--port", str(free_port()),
            "--node-config", f"partition-id={k}"]  # fmt: skip
    return _Proc(args, Path(run_dir) / FLOWER_LOGS / f"supernode-{k}.log", env)


def deploy(run_dir: Path, clients: int, device: str, env: dict, node_timeout: float, superlink: Optional[str],
           quiet: bool, total: int, sample: bool = True) -> dict:  # fmt: skip
    """A localhost deployment (or, with ``superlink``, a submission to an existing one)."""
    link, nodes = None, []
    env = {**env, "FLWR_HOME": str(Path(run_dir) / FLOWER_HOME)}  # Flower's state stays in the run
    try:
        if superlink is None:
            port = free_port()
            address = f"127.0.0.1:{port}"
            link = _Proc([_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)],
                         Path(run_dir) / FLOWER_LOGS / "superlink.log", env)  # fmt: skip
            deadline = time.monotonic() + 60
            while reachable(address, 1.0) is not None:
                if not link.alive() or time.monotonic() > deadline:
                    raise UserError(f"the local SuperLink did not start (see {link.log})")
                time.sleep(0.3)
            nodes = [start_supernode(run_dir, k, address, env) for k in range(clients)]
        else:
            address = superlink
            why = reachable(address)
            if why is not None:
                raise UserError(f"cannot reach the SuperLink at {address} ({why})")
        app, home = write_app(run_dir, device, node_timeout, address, sample)
        since = time.time()
        rid = submit(app, home, env)
        return _wait_result(run_dir, since, nodes, link, total, quiet, lambda: run_status(home, rid, env), rid)
    finally:
        for p in nodes + ([link] if link else []):
            p.stop()


def simulate(run_dir: Path, clients: int, device: str, env: dict, node_timeout: float, sample: bool = True) -> dict:
    """Flower's simulation engine in this process."""
    import json
    import logging

    from flwr.simulation import run_simulation

    from .apps import make_apps

    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):  # the Ray workers inherit them
        os.environ[key] = env[key]
    since = time.time()
    server_app, client_app = make_apps({"run-dir": str(Path(run_dir).resolve()), "device": device,
                                        "node-timeout": node_timeout, "sample": sample})  # fmt: skip
    logging.getLogger("ray").setLevel(logging.ERROR)
    run_simulation(server_app, client_app, num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": logging.ERROR, "log_to_driver": False}})  # fmt: skip
    path = Path(run_dir) / FLOWER_RESULT
    res = json.loads(path.read_text()) if path.is_file() else {}
    if res.get("time", 0) < since:
        raise UserError("the Flower simulation ended without a result (see the log above)")
    return res


def run_flower(cfg: Config, run_dir, engine: str = "simulation", device: str = "cpu", threads: Optional[int] = None,
               superlink: Optional[str] = None, node_timeout: float = 120.0, rounds_per_message: Optional[int] = None,
               quiet: bool = False, secrets=None, sample: bool = True) -> dict:  # fmt: skip
    """Train (or resume) ``cfg`` in ``run_dir`` through Flower, sample through the same apps, and
    join the parties' records into the standard run layout; returns a small summary.

    ``sample=False``: training only (no ``samples/``), like ``train``."""
    from ..lock import locked

    require_flower()
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: one of {', '.join(ENGINES)}")
    if superlink is not None and engine != "deployment":
        raise UserError("--superlink applies to --engine deployment only")
    if threads is not None and threads < 1:
        raise UserError(f"--threads={threads}: must be at least 1")
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: cpu or cuda")
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    plan = prepare(cfg, run_dir, secrets, rounds_per_message)  # bad input fails here
    with locked(run_dir):
        env = _thread_env(threads)
        total = cfg.train.steps
        if engine == "simulation":
            res = simulate(run_dir, plan.clients, device, env, node_timeout, sample)
        else:
            res = deploy(run_dir, plan.clients, device, env, node_timeout, superlink, quiet, total, sample)
        if not res.get("ok"):
            raise UserError(res.get("error") or "the Flower run failed")
        trained = time.perf_counter() - t0
    summary = collect(run_dir, quiet=True)
    summary.update(engine=engine, seconds=trained, threads=int(env["OMP_NUM_THREADS"]))
    return summary
