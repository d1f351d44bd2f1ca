"""Real processes for the scenarios: demo apps, one lb, its admin API.

Every process runs in its own session (so it and anything it spawns can be
signalled as a group) and is registered with `Reaper`, which stops whatever is
still running when the driver exits, however it exits. Ports are ephemeral
loopback ports picked by the kernel.
"""
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def free_ports(n):
    """n distinct free loopback TCP ports (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def accepts(port):
    """Does 127.0.0.1:port accept a TCP connection?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def http(method, url, body=None, headers=None, timeout=5.0):
    """(status, parsed JSON or text, headers) of one request; status 0 if it failed."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, hdrs = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, e.headers
    except (OSError, urllib.error.URLError):
        return 0, None, {}
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def wait_until(what, cond, timeout=15.0, every=0.05):
    """Polls cond() until truthy; raises with `what` after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class Reaper:
    """Remembers every child so none outlives the driver."""

    procs = []

    @classmethod
    def spawn(cls, argv, log_path, env=None):
        log = open(log_path, "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
        log.close()
        cls.procs.append(p)
        return p

    @classmethod
    def stop_all(cls):
        for p in cls.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        for p in cls.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        cls.procs = []


def proc_stats(pid):
    """(cpu seconds so far, RSS MiB, open fds) of pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return cpu, rss, fds
    except (OSError, IndexError, ValueError):
        return None


class App:
    """One `app` process in worker-pool mode on a fixed port (restartable there)."""

    def __init__(self, bin_dir, work, name, port, workers, service_ms):
        self.bin, self.work, self.name, self.port = bin_dir, work, name, port
        self.workers, self.service_ms = workers, service_ms
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def capacity(self):
        """Nominal requests per second: workers / service time."""
        return self.workers * 1000.0 / self.service_ms

    def start(self):
        argv = [os.path.join(self.bin, "app"), "--id", self.name,
                "--listen", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                "--service-time-ms", str(self.service_ms)]
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = Reaper.spawn(argv, os.path.join(self.work, f"{self.name}.log"), env)
        wait_until(f"{self.name} healthy", self.healthy, timeout=10)

    def healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
        return http("GET", self.url + "/health", timeout=1)[0] == 200

    def kill(self):
        """SIGKILL: a crash (docker kill)."""
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        """SIGTERM and wait: a graceful stop (docker stop)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def set_service_ms(self, ms):
        status, body, _ = http("PUT", self.url + "/fault", {"service_time_ms": ms})
        if status != 200:
            raise RuntimeError(f"PUT /fault on {self.name}: {status} {body}")


class Lb:
    """One lb process with a generated config, and its admin API."""

    def __init__(self, bin_dir, work, backends, algorithm="round_robin", sticky="none",
                 health_interval="500ms", dynamic_interval="1s", tag="lb"):
        self.port, self.admin_port = free_ports(2)
        self.token = secrets.token_hex(16)
        self.work = work
        lines = [
            "[server]", f'listen = "127.0.0.1:{self.port}"', "threads = 2",
            'grace_period = "1s"',
            "[admin]", f'listen = "127.0.0.1:{self.admin_port}"',
            "[balancer]", f'algorithm = "{algorithm}"', f'sticky = "{sticky}"',
            "[health]", f'interval = "{health_interval}"', 'timeout = "400ms"',
            "rise = 2", "fall = 2",
            "[dynamic]", f'interval = "{dynamic_interval}"',
            # The scenarios measure balancing, not logging: no access log.
            "[log]", "access = false",
        ]
        for name, port, weight in backends:
            lines += ["[[backends]]", f'name = "{name}"', f'addr = "127.0.0.1:{port}"',
                      f"weight = {weight}"]
        self.config = os.path.join(work, f"{tag}.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        env = dict(os.environ, LB_ADMIN_TOKEN=self.token, RUST_LOG="warn")
        argv = [os.path.join(bin_dir, "lb"), "-c", self.config]
        self.proc = Reaper.spawn(argv, os.path.join(work, f"{tag}.log"), env)
        # The proxy and the admin API are separate services that start
        # independently: wait for both.
        wait_until("lb listening", lambda: self._alive() and accepts(self.port))
        wait_until("lb admin API", lambda: self._alive() and
                   http("GET", self.admin("/health"), timeout=1)[0] == 200)
        names = [b[0] for b in backends]
        wait_until("every backend up in lb", lambda: all(
            self.backends().get(n, {}).get("health") == "up" for n in names))

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"lb exited with {self.proc.returncode}; see {self.config}")
        return True

    def admin(self, path):
        return f"http://127.0.0.1:{self.admin_port}{path}"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def call(self, method, path, body=None):
        status, v, _ = http(method, self.admin(path), body,
                            {"Authorization": f"Bearer {self.token}"})
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {v}")
        return v

    def backends(self):
        """GET /admin/backends as {name: entry}."""
        return {b["name"]: b for b in self.call("GET", "/admin/backends")}

    def set_mode(self, name, mode):
        self.call("PUT", f"/admin/backends/{name}/mode", {"mode": mode})

    def wait_health(self, name, health, timeout=15):
        wait_until(f"{name} {health} in lb",
                   lambda: self.backends()[name]["health"] == health, timeout)

    def stats(self):
        return proc_stats(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Stack:
    """Apps (name → workers) behind one lb; `with Stack(...) as s:` stops both."""

    def __init__(self, plan, work, workers, **lb_args):
        ports = free_ports(len(workers))
        self.apps = {}
        for (name, n), port in zip(workers.items(), ports):
            self.apps[name] = App(plan.bin, work, name, port, n, plan.service_ms)
        backends = [(name, a.port, 10) for name, a in self.apps.items()]
        self.lb = Lb(plan.bin, work, backends, health_interval=plan.health_interval,
                     **lb_args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lb.stop()
        for a in self.apps.values():
            if a.proc.poll() is None:
                a.kill()
        return False
