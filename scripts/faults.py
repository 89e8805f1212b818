"""The fault suite: real Redis, PostgreSQL and two `clearmark worker --reap` processes on
ports of their own; per fault, N new images are submitted, the fault is injected while jobs
run, and the table says what became of them.

    bash scripts/faults.sh [-n 40] [--faults child,parent,...] [--timeout 600]

The images are the watermarked example photos (real products, real marks), so every job
runs the whole pipeline. The storage is a tmpfs of its own (mounted here: root with mount
rights), which the storage faults make read-only or fill up.

lost: jobs that failed (every image is valid) or never got a row; stuck: not finished when
the round's timeout ran out; duplicated: jobs with more than one terminal status event;
webhooks missing: finished jobs whose signed webhook never arrived (repeats of one event id
are allowed: at least once, the receiver dedups); temp_files: temporary files left in the
storage; recovery: seconds from the injection to the last job finished (the `none` round
shows the time the work itself takes).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from clearmark.workers.db import FINISHED, JobStatus  # reads no settings: the environment is set later

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
FAULTS = (
    "none",
    "child",
    "parent",
    "time_limit",
    "redis_aof",
    "redis_bare",
    "postgres",
    "crash_submit",
    "storage_ro",
    "storage_full",
)
EXAMPLES = sorted((ROOT / "examples" / "watermarked").glob("*.jpg"))
STORAGE_SIZE = "1g"  # the tmpfs; storage_full fills what is left of it
ENV = {  # short leases and reaper passes, so recovery shows within a round
    "CLEARMARK_LEASE_S": "10",
    "CLEARMARK_REAP_INTERVAL_S": "3",
    "CLEARMARK_REAP_GRACE_S": "5",
    "CLEARMARK_VISIBILITY_TIMEOUT_S": "120",
    # Real photos take 3-4 s each here, a child's first one and a loaded machine several
    # times that: a soft limit they cannot reach (a failed job counts as lost).
    "CLEARMARK_SOFT_TIME_LIMIT_S": "60",
    "CLEARMARK_HARD_TIME_LIMIT_S": "75",
    "CLEARMARK_THREADS": "1",
    "CLEARMARK_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
    "CLEARMARK_WEBHOOK_BACKOFF_S": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def save_photo(seed: int, path: Path) -> None:
    """One of the watermarked example photos (800 px, a detected mark: the whole pipeline
    runs, not the half second of a `no_watermark`), its seed in a JPEG comment so that each
    file has bytes of its own (a job per file)."""
    with Image.open(EXAMPLES[seed % len(EXAMPLES)]) as img:
        img.save(path, quality=95, comment=f"faults seed {seed}")


def fill(path: Path) -> None:
    """Write zeros to `path` until its filesystem is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 20))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


class Receiver(ThreadingHTTPServer):
    """Webhook receiver: event ids per job."""

    def __init__(self):
        self.events: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.events.setdefault(body["job"]["id"], []).append(body["id"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Redis:
    def __init__(self, root: Path):
        self.dir, self.port, self.proc = root / "redis", free_port(), None
        self.dir.mkdir()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait(
            lambda: (
                subprocess.run(
                    ["redis-cli", "-p", str(self.port), "ping"], capture_output=True
                ).stdout.strip()
                == b"PONG"
            ),
            30,
            "redis",
        )

    def stop(self, graceful: bool) -> None:
        self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        self.proc.wait(30)

    def wipe(self) -> None:
        shutil.rmtree(self.dir)
        self.dir.mkdir()


class Postgres:
    def __init__(self, root: Path):
        self.dir, self.port = root / "pg", free_port()
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_pg([PG_BIN / "initdb", "-D", self.dir / "data", "-U", "postgres", "--auth=trust"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_pg(self, argv) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *map(str, argv)], check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self._as_pg(
            [
                PG_BIN / "pg_ctl",
                "-D",
                self.dir / "data",
                "-l",
                self.dir / "log",
                "-w",
                "-o",
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
                "start",
            ]
        )

    def stop(self) -> None:
        self._as_pg([PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w", "stop"])


class Worker:
    def __init__(self, name: str, env: dict, logs: Path):
        self.name, self.env, self.logs, self.proc = name, env, logs, None
        self.groups: list[int] = []  # every process group started (a killed parent's orphans)

    def start(self) -> None:
        queues = ",".join(self.env[f"CLEARMARK_QUEUE_{q}"] for q in ("UPLOADS", "BULK", "WEBHOOKS"))
        self.log = open(self.logs / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clearmark",
                "worker",
                "--reap",
                "-Q",
                queues,
                "-c",
                "1",
                "-n",
                f"{self.name}@%h",
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.append(self.proc.pid)

    def children(self) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def stop(self) -> None:
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)


def wait(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - a service that is down: keep waiting
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class Suite:
    def __init__(self, n: int, timeout: float, outage: float | None = None):
        self.n, self.timeout, self.outage = n, timeout, outage
        self.root = Path(tempfile.mkdtemp(prefix="clearmark-faults-"))
        self.root.chmod(0o755)  # PostgreSQL runs as its own user
        log(f"working in {self.root}")
        self.redis, self.pg = Redis(self.root), Postgres(self.root)
        self.storage = self.root / "storage"
        self.storage.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={STORAGE_SIZE}", "tmpfs", str(self.storage)]
        self.storage_mounted = not subprocess.run(mount, capture_output=True).returncode
        if not self.storage_mounted:
            log("could not mount a tmpfs for the storage (not root?): no storage faults")
        self.redis.start()
        self.pg.start()
        self.receiver = Receiver()
        self.env = dict(
            os.environ,
            **ENV,
            CLEARMARK_DATABASE_URL=self.pg.url,
            CLEARMARK_BROKER_URL=f"redis://127.0.0.1:{self.redis.port}/0",
            CLEARMARK_STORAGE_URI=self.storage.as_uri(),
            CLEARMARK_DATA_DIR=str(self.root / "data"),
            CLEARMARK_ENGINE_DIR=os.environ.get("CLEARMARK_ENGINE_DIR", str(self.root / "engines")),
            CLEARMARK_QUEUE_UPLOADS="faults.uploads",
            CLEARMARK_QUEUE_BULK="faults.bulk",
            CLEARMARK_QUEUE_WEBHOOKS="faults.webhooks",
        )
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("CLEARMARK_")})
        from clearmark.workers import migrate

        migrate.upgrade(self.pg.url)
        self.cli("tenants", "create", "faults", "--webhook", self.receiver.url)
        self.cli("engines", "build")  # once, as compose's build-engines: the workers only load
        self.workers = [Worker(f"w{i}", self.env, self.root) for i in (1, 2)]
        for w in self.workers:
            w.start()
        self.round = 0

    def cli(self, *argv, check=True) -> subprocess.CompletedProcess:
        run = subprocess.run(
            [sys.executable, "-m", "clearmark", *argv], env=self.env, capture_output=True, text=True
        )
        if check and run.returncode:
            raise RuntimeError(f"clearmark {' '.join(argv)}: {run.stderr[-2000:]}")
        return run

    def sql(self, query: str, **params):
        from sqlalchemy import text

        from clearmark.workers.db import get_engine

        with get_engine(self.pg.url).connect() as conn:
            return conn.execute(text(query), params).all()

    def images(self) -> list[Path]:
        folder = self.root / f"in{self.round}"
        folder.mkdir()
        for i in range(self.n):
            save_photo(self.round * 100_000 + i, folder / f"p{i:03d}.jpg")
        return sorted(folder.glob("*.jpg"))

    def submit(self, paths: list[Path], crash: bool = False) -> None:
        if not crash:
            self.cli("submit", "--tenant", "faults", *map(str, paths))
            return
        script = (
            "import os, signal, sys\nfrom pathlib import Path\nimport clearmark.workers.broker\n"
            "from clearmark.workers.submit import submit_files\n"
            "clearmark.workers.broker.enqueue = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
            "list(submit_files([Path(p) for p in sys.argv[1:]], tenant='faults'))\n"
        )
        run = subprocess.run([sys.executable, "-c", script, *map(str, paths)], env=self.env)
        assert run.returncode == -signal.SIGKILL, run.returncode

    def batch_jobs(self) -> dict[str, str]:
        rows = self.sql(
            "SELECT j.id, j.status FROM jobs j JOIN batches b ON b.id = j.batch_id "
            "WHERE b.created_at = (SELECT max(created_at) FROM batches)"
        )
        return dict(rows)

    def busy_child(self, worker: Worker) -> int | None:
        """A pool child of `worker` that is working (it used CPU in the last half second)
        while a job is running."""
        kids = [pid for pid in worker.children() if _is_pool_child(pid)]
        before = {pid: _cpu_ticks(pid) for pid in kids}
        time.sleep(0.5)
        busy = [pid for pid in kids if _cpu_ticks(pid) > before[pid]]
        running = self.sql("SELECT count(*) FROM jobs WHERE status = 'running'")[0][0]
        return busy[0] if running and busy else None

    def inject(self, fault: str) -> None:
        w = self.workers[0]
        if fault == "child":
            os.kill(wait(lambda: self.busy_child(w), 120, "a busy child"), signal.SIGKILL)
        elif fault == "parent":
            wait(lambda: self.busy_child(w), 120, "a busy child")
            os.kill(w.proc.pid, signal.SIGKILL)
            w.proc.wait(30)
            time.sleep(2)
            w.start()  # as a supervisor (compose restart policy) would
        elif fault == "time_limit":  # a hung task: the pool kills it at the hard limit
            child = wait(lambda: self.busy_child(w), 120, "a busy child")
            os.kill(child, signal.SIGSTOP)
            wait(lambda: not _alive(child), 120, "the hard time limit to kill the child", 1.0)
        elif fault in ("redis_aof", "redis_bare"):
            self.redis.stop(graceful=fault == "redis_aof")
            if fault == "redis_bare":
                self.redis.wipe()
            time.sleep(self.outage if self.outage and fault == "redis_bare" else 5)
            self.redis.start()
        elif fault == "postgres":
            self.pg.stop()
            time.sleep(self.outage or 15)
            self.pg.start()
        elif fault in ("storage_ro", "storage_full"):
            if not self.storage_mounted:
                raise RuntimeError(f"{fault} needs the storage on its own tmpfs (run as root)")
            self.storage_outage(fault)

    def remount(self, mode: str) -> None:
        # A remount to ro is refused (EBUSY) while a worker has a file open for writing.
        remount = ["mount", "-o", f"remount,{mode}", str(self.storage)]
        wait(lambda: not subprocess.run(remount, capture_output=True).returncode, 30, f"storage {mode}", 0.05)

    def storage_outage(self, fault: str) -> None:
        """The storage read-only, or full, for --outage seconds (default 30)."""
        filler = self.storage / "filler"
        if fault == "storage_ro":
            self.remount("ro")
        else:
            fill(filler)
        time.sleep(self.outage or 30)
        if fault == "storage_ro":
            self.remount("rw")
        else:
            filler.unlink()

    def run(self, fault: str) -> dict:
        self.round += 1
        paths = self.images()
        log(f"round {self.round}: {fault}, {len(paths)} images")
        if fault == "crash_submit":
            t0 = time.monotonic()
            self.submit(paths, crash=True)
        else:
            self.submit(paths)
            wait(
                lambda: any(s != "queued" for s in self.batch_jobs().values()),
                120,
                "a job of this round to start",
                0.05,
            )
            t0 = time.monotonic()
            if fault != "none":
                self.inject(fault)
        job_ids: dict[str, str] = {}
        try:
            wait(
                lambda: (
                    (jobs := self.batch_jobs())
                    and len(jobs) == self.n
                    and all(JobStatus(s) in FINISHED for s in jobs.values())
                ),
                self.timeout,
                "all jobs",
                1.0,
            )
        except TimeoutError:
            pass
        recovery = time.monotonic() - t0
        job_ids = self.batch_jobs()
        wait(lambda: self._webhooks_settled(job_ids), 60, "webhooks", 1.0) if job_ids else None
        return self.count(fault, job_ids, recovery)

    def _webhooks_settled(self, job_ids) -> bool:
        return not self.sql(
            "SELECT count(*) FROM jobs WHERE webhook_pending AND id = ANY(:ids)", ids=list(job_ids)
        )[0][0]

    def count(self, fault: str, jobs: dict[str, str], recovery: float) -> dict:
        ids = list(jobs)
        terminal = Counter(
            job_id
            for (job_id,) in self.sql(
                "SELECT job_id FROM job_events WHERE kind IN ('status', 'takeover') "
                "AND to_status = ANY(:done) AND job_id = ANY(:ids)",
                done=[s.value for s in FINISHED],
                ids=ids,
            )
        )
        hooks = self.receiver.events
        finished = [j for j, s in jobs.items() if JobStatus(s) in FINISHED]
        return {
            "fault": fault,
            "jobs": len(jobs),
            "lost": self.n - len(jobs) + sum(s == "failed" for s in jobs.values()),
            "stuck": sum(JobStatus(s) not in FINISHED for s in jobs.values()),
            "duplicated": sum(n > 1 for n in terminal.values()),
            "hooks_missing": sum(j not in hooks for j in finished),
            "hooks_repeated": sum(len(hooks.get(j, ())) > len(set(hooks.get(j, ()))) for j in finished),
            "attempts": sum(
                a for (a,) in self.sql("SELECT attempts FROM jobs WHERE id = ANY(:ids)", ids=ids)
            ),
            "temp_files": sum(1 for _ in self.storage.rglob("*.part")),
            "recovery_s": round(recovery, 1),
        }

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.storage_mounted:
            subprocess.run(["umount", "--lazy", str(self.storage)], check=False)
        self.redis.stop(graceful=False)
        try:
            self.pg.stop()
        except subprocess.CalledProcessError:
            pass


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _is_pool_child(pid: int) -> bool:
    """A prefork pool child (not the reaper child, which runs `clearmark reap`)."""
    try:
        return b"reap" not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def table(rows: list[dict]) -> str:
    cols = [
        "fault",
        "jobs",
        "lost",
        "stuck",
        "duplicated",
        "hooks_missing",
        "hooks_repeated",
        "attempts",
        "temp_files",
        "recovery_s",
    ]
    lines = ["  ".join(f"{c:>14}" for c in cols)]
    lines += ["  ".join(f"{row[c]!s:>14}" for c in cols) for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=40, help="images per fault")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per round")
    parser.add_argument(
        "--outage",
        type=float,
        default=None,
        help="seconds PostgreSQL (postgres), Redis (redis_bare) and the storage (storage_ro, "
        "storage_full) stay down (default 15, 5 and 30)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and data after a pass")
    args = parser.parse_args()
    suite = Suite(args.n, args.timeout, args.outage)
    rows = []
    try:
        for fault in args.faults.split(","):
            rows.append(suite.run(fault))
            log(json.dumps(rows[-1]))
    finally:
        suite.close()
    print(table(rows))
    bad = [
        r["fault"]
        for r in rows
        if r["lost"] or r["stuck"] or r["duplicated"] or r["hooks_missing"] or r["temp_files"]
    ]
    if bad:
        print(f"FAILED: {', '.join(bad)} (logs in {suite.root})")
        return 1
    if not args.keep:
        shutil.rmtree(suite.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
