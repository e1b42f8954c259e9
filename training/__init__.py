"""Continual Atari training on Ray: config schema, schedule, services, actors, driver, commands."""
