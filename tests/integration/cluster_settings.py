"""Settings for test clusters: heartbeats and gossip five times faster than the defaults, so that
failure detection and hint delivery happen within test time bounds."""

FAST = (
    "gossip_interval_ms=200",
    "heartbeat_interval_ms=200",
    "hint_scan_interval_ms=200",
    "phi_acceptable_pause_ms=600",
    "phi_min_std_dev_ms=100",
    "unreachable_retry_ms=300",
)
