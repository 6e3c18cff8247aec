"""Views that patch nothing: logit lens, neurons, weights."""
