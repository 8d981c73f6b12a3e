"""The durable outbound queue (issue 4): stored messages plus per-recipient state."""
