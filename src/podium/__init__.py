"""podium: the operator CLI and the stack launcher."""
