"""Events from Entity Permissions Core, by webhook or by polling: read the same way and
made durable once, on the stream that the approval consumers read."""
