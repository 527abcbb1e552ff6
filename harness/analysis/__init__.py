"""What a run's results mean: paired statistics, contamination, and the analyses that run
after a run over the store. Pure functions over records and SQL; nothing here runs a model
or imports the runner."""
