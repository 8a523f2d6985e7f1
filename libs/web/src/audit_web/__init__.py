"""What the project's HTTP services (``audit-api``, ``audit-query``) share at their edge: the
bounded connection protocol and the cleaning of client text before it is recorded."""
