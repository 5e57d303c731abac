"""Reward scoring for rlcm: pure scorers (arrays in, floats out), the HTTP app, Serve deployments, clients."""
