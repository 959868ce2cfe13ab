"""podium recovery: retry policies, fallbacks, dead-lettering."""
