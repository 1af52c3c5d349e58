"""What the two server-rendered screens share (the operator console of the API, the
approver screen of the simulator): templates with autoescape, the vendored htmx and the
style sheet served by the app itself, security headers, and form reading."""
