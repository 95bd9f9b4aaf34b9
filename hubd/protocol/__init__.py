"""The wire format: envelopes, client frames and channel names. Pure: no trio, no web framework."""
