"""What one run of ``audit-verify`` found, and its one-line summary."""

from dataclasses import dataclass, field


@dataclass
class Report:
    """What one run found."""

    findings: list[str] = field(default_factory=list)
    seals: int = 0
    rows: int = 0
    unsigned: int = 0
    pending: int = 0  # rows younger than the grace period, not sealed yet
    accounted: int = 0  # broker sequences checked for completeness
    cuts: int = 0  # partitions retention removed (valid cuts)
    head: str = ""

    def add(self, other: "Report") -> None:
        self.findings += other.findings
        self.rows += other.rows
        self.unsigned += other.unsigned
        self.pending += other.pending
        self.accounted += other.accounted

    def summary(self) -> str:
        verdict = f"FOUND {len(self.findings)} problem(s)" if self.findings else "intact"
        return (
            f"{verdict}: {self.seals} seals, {self.rows} rows checked"
            f" ({self.unsigned} unsigned from before authorship, {self.pending} awaiting a seal),"
            f" {self.accounted} broker sequences accounted for"
            + (f", {self.cuts} partition(s) removed by retention" if self.cuts else "")
            + f"; head {self.head or 'none'}"
        )
