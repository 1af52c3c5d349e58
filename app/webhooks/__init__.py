"""The Entity Permissions webhook: decisions received, verified, made durable, once."""
