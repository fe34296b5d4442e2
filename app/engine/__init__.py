"""The run engine: dispatch (the one door), the runner, run logs, templating, policies."""
