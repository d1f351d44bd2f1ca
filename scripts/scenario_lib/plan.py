"""How big and how long each experiment is, for the three modes.

Capacity model (see app/src/capacity.rs): every app serves `/api/*` with
`workers` concurrent workers, each request holding one for `service_ms`; the
rest wait in the app's FIFO queue. An app's capacity is therefore
workers × 1000 / service_ms requests per second — a timer, not CPU work, so
four apps of different sizes run side by side on a 2-core machine without the
cores deciding the outcome. Full and quick mode use the same capacities
(quick only runs shorter); smoke shrinks everything to prove the machinery in
seconds (`make test`).
"""
from dataclasses import dataclass, field


@dataclass
class Plan:
    mode: str
    bin: str = "target/release"
    service_ms: int = 20
    health_interval: str = "500ms"
    # --- single_app (seed 001): one app, 100 clients -------------------------
    single_workers: int = 40  # 2,000 req/s
    clients: int = 100
    single_rate: int = 1000  # the seed's throughput floor, as a fixed rate
    closed_s: int = 10  # closed loop (wrk), throughput only
    steady_s: int = 120  # open loop: p95/p99, jitter, halves, resources
    recovery: tuple = (4, 3, 5)  # before, overload burst, after (s)
    # --- dual_apps (seed 003): two equal apps --------------------------------
    dual_workers: int = 20  # 1,000 req/s each
    share_requests: int = 1000
    share_rate: int = 250
    failover: tuple = (100, 30, 10, 20, 25)  # rate, length, stop at, start at, "after"
    sticky: tuple = (50, 20)  # clients, requests each
    scaling_step_s: int = 5
    scaling_steps: int = 6  # bisection steps: precision 0.8 / 2**steps of capacity
    latency_target_ms: float = 100.0  # p99 target of the scaling test (5 × service)
    rolling: tuple = (200, 20)  # rate, length
    # --- quad_apps (seed 004): four apps of capacity 1 : 1 : 0.5 : 1.5 -------
    quad_workers: dict = field(default_factory=lambda: {
        "app-1": 20, "app-2": 20, "app-3": 10, "app-4": 30})
    quad_rate: int = 3000  # the seed's algorithm benchmark: targetRPS 3000
    quad_conns: int = 256
    algo_s: int = 45
    quad_closed_s: int = 10
    calib_s: int = 3
    chaos_algorithm: str = "least_time"
    chaos_rate: int = 1200  # app-4 alone (1,500 req/s) can carry it
    chaos_conns: int = 128
    chaos: tuple = (10, 15, 10)  # baseline, chaos, after (s)
    slowdown: int = 5  # memory_pressure: service time × this


def plan_for(mode):
    if mode == "full":
        return Plan(mode)
    if mode == "quick":
        return Plan(mode, closed_s=4, steady_s=20, recovery=(3, 2, 4),
                    failover=(100, 15, 5, 10, 12.5), scaling_step_s=2, scaling_steps=4,
                    rolling=(200, 12), algo_s=10, quad_closed_s=4, calib_s=2,
                    chaos=(4, 6, 5))
    if mode == "smoke":
        return Plan(mode, health_interval="200ms", single_workers=8, clients=10,
                    single_rate=100, closed_s=1, steady_s=1, recovery=(0.5, 0.5, 1),
                    dual_workers=4, share_requests=200, share_rate=200,
                    failover=(50, 2.5, 0.7, 1.4, 2), sticky=(5, 4), scaling_step_s=1,
                    scaling_steps=1, rolling=(50, 2.5),
                    quad_workers={"app-1": 4, "app-2": 4, "app-3": 2, "app-4": 6},
                    quad_rate=300, quad_conns=32, algo_s=0.5, quad_closed_s=1, calib_s=1,
                    chaos_rate=120, chaos_conns=16, chaos=(0.3, 0.7, 0.8))
    raise ValueError(f"mode {mode!r} is not one of full, quick, smoke")
