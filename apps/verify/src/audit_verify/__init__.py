"""``audit-verify``: an auditor's tool that proves ``audit_events`` is what the pipeline wrote,
or names exactly what is not. Read-only by construction: it connects with a SELECT-only login,
checks seals with public keys and authorship with the producers' keys, publishes nothing and
writes nothing. ``checker`` is the check (importable, testable alone); ``cli`` the command."""
