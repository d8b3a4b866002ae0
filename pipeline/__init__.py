"""chatmod pipeline package."""
