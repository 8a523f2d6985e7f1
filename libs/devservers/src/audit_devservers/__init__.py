"""Real PostgreSQL and NATS JetStream processes from PyPI wheels, no Docker, no root services,
and the child-process helper that runs the apps beside them.

Used by the test fixtures, ``make dev`` and the benchmark. Each server is a child process that
can be stopped gracefully, killed with SIGKILL and started again on the same data directory and
port, which is what the fault tests need.
"""

from audit_devservers.children import Child
from audit_devservers.servers import NatsServer, PostgresServer, free_port

__all__ = ["Child", "NatsServer", "PostgresServer", "free_port"]
