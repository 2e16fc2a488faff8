"""Dead letters: entries a stage could not decode or apply, and how an operator re-drives them."""
