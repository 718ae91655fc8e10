"""Synthetic dual-energy baggage scanner: physics, threat-object models, bag clutter, dataset writer."""
