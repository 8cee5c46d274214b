"""Experiments: assignment of users to arms (salted hashing, layers, a long-term holdout), the
analysis of an A/B test from the event log (Welch, CUPED, sample-ratio mismatch, power, guardrails),
team-draft interleaving, and the impression-budget allocators (Thompson with an empirical-Bayes prior,
UCB1, greedy, epsilon-greedy, uniform)."""
