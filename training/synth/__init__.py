"""Synthetic dual-energy baggage scanner: physics, threat-object models, bag clutter, dataset writer."""

# Smallest synthetic scan side: below this, bags and objects no longer fit a realistic pixel pitch.
MIN_SIDE = 128
