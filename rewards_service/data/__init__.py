"""Data files shipped with rewards_service (see PROVENANCE.md)."""
