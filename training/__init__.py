"""chatmod training package."""
