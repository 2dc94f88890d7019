"""Server side of ftte: slice planner, aggregation strategies, training service and CLI."""
