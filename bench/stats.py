"""The one percentile helper of the benchmarks (no dependencies: ``loadgen`` imports it too)."""


def percentiles(samples: list[float], *qs: float) -> list[float]:
    """Each quantile ``q`` of ``samples`` (seconds), in milliseconds: the value below which a
    fraction ``q`` of them lie (nearest rank)."""
    ordered = sorted(samples)
    return [ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 for q in qs]
