"""`rlcm eval`: sampling, scoring, paired statistics and the report of tuned runs against their base model."""
