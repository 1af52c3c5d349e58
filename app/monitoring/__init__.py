"""What operators look at: flow metrics, the seed's monitoring figures and alerts."""
