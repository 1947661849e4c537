"""Side effects: creating, watching and removing sandbox pods."""
