"""Runners, in three rooms: `runners.engine` (one trial: data, models, the training loop,
export), `runners.sweep` (Ray Tune + Optuna + MLflow), `runners.board` (the leaderboard
reader). Each imports only the rooms below it: board and engine know nothing of the sweep."""
