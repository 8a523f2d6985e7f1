"""``audit-retention``: removes what the policy no longer keeps, provably. ``removal`` is a run's
steps, ``archiving`` writes a partition's archive, ``cli`` the command (and legal holds)."""
