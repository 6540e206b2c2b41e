"""Start and stop the product's processes (redis-server, one registry per province …) for
`make run`, demos and end-to-end tests. Each service is its own OS process on a free port.

`processes.py` names, starts, checks and stops one process; `launch.py` is `Topology`, every process
of the product started together; `detached.py` is `make up` / `make down` / `make status`
(`python -m medaid.topology`). Their names are read from here (`from medaid.topology import Topology`).
"""

from __future__ import annotations

from medaid.topology.detached import STATE_FILE, TARGETS_FILE, clock_spec, down, main, prometheus_targets, up
from medaid.topology.detached import _wait_healthy as _wait_healthy  # `make up` / `make status`'s check, tested
from medaid.topology.launch import (
    DEMO_CLOCK,
    GATEWAY_PATH,
    PROVINCES,
    SECURITY_ENV,
    TLS_INSTITUTIONS,
    Topology,
    write_console_operators,
)
from medaid.topology.processes import (
    HTTP_SERVICES,
    ServiceProcess,
    instance_names,
    protocol_of,
    service_of,
    start_service,
)

__all__ = [
    "DEMO_CLOCK", "GATEWAY_PATH", "HTTP_SERVICES", "PROVINCES", "SECURITY_ENV", "STATE_FILE", "TARGETS_FILE",
    "TLS_INSTITUTIONS", "ServiceProcess", "Topology", "clock_spec", "down", "instance_names", "main",
    "prometheus_targets", "protocol_of", "service_of", "start_service", "up", "write_console_operators",
]
