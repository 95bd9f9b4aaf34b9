"""Who gets what: the hub, per-connection mailboxes and sessions. Imports no web framework."""
