"""Live triggers: rules that fire pushes for one person at the right moment."""
