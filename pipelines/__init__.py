"""Stage graph and scheduling of the batch pipeline."""
