"""Dead letters: what could not be accepted, why, and the sealed original bytes."""
