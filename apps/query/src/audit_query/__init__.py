"""The read side of the audit log (issue 15, first part): queries and the gap-free feed."""
