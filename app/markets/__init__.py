"""Markets: registration and the approval state of each market."""
