"""The leaderboard reader: MLflow's records of sweeps read back as ranked boards, tables and a
Pareto plot. Imports neither torch nor Ray, so that the service and the CLI read a board without
loading a trainer."""
