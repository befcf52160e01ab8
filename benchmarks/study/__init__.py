"""The empirical study of GRO presets and modes on tiny models and toy verifiable tasks (see README, Empirical study)."""
