"""podium's api service: a projection of the topics into its own database (runs and
their steps), and the operators' HTTP API over it (``podium_api.app``)."""
