"""Approvals: decisions of Entity Permissions Core applied to markets, exactly once."""
