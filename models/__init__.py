"""chatmod models package."""
