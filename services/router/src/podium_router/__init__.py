"""podium's router: workflow definitions, routing, and the run state machine."""
