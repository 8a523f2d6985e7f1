"""The routes of ``audit-query``, one module per resource: ``events`` (listing, one event),
``feed``, ``export``, ``viewer`` (HTML) and ``probes``."""
