"""The placeholder accounts API: every request is answered only after its audit event is
acknowledged by JetStream."""
