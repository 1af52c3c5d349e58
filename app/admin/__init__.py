"""The admin API: processed events, replays, the seed's monitoring figures and alerts."""
