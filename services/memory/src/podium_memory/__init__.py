"""podium memory: scoped memory for workflows."""
