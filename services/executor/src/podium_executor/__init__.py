"""podium executor: capability plugins, pools, timeouts."""
