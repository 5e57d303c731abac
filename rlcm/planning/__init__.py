"""`rlcm plan`: GPU kinds, measured pieces, the actors assembled on a GPU, and advice on what to change."""
